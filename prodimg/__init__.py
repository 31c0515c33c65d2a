"""prodimg: text-to-product-image generation with a CLIP-conditioned few-step denoising GAN."""

from .models import ProductDiscriminator, ProductGenerator
from .pipeline import ProductImagePipeline, ProductImagePipelineOutput, PromptEmbeds
from .schedulers import DDGANScheduler

__version__ = "0.1.0"
__all__ = [
    "ProductImagePipeline",
    "ProductImagePipelineOutput",
    "PromptEmbeds",
    "ProductGenerator",
    "ProductDiscriminator",
    "DDGANScheduler",
]
