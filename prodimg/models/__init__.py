from .discriminator import ProductDiscriminator, ProductDiscriminatorOutput
from .generator import ProductGenerator, ProductGeneratorOutput

__all__ = ["ProductGenerator", "ProductGeneratorOutput", "ProductDiscriminator", "ProductDiscriminatorOutput"]
