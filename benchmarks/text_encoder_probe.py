"""How well a text encoder's pooled embedding separates the catalog's attributes.

    python benchmarks/text_encoder_probe.py --text_encoder pipelines/prodimg-fashion-32
    python benchmarks/text_encoder_probe.py --text_encoder runs/clip-32

Embeds the captions of the first 6,000 train rows and the first 2,000 test rows (`text_embeds`,
standardised with the train statistics) and reports, per label column (category, colour,
pattern), the test accuracy of (1) a linear probe trained on the train embeddings and (2) the
nearest class centroid (overall and per class). The linear probe says whether the attribute is in
the embedding at all; the centroid says whether it is a dominant direction, which is closer to what
the generator's conditioning sees.
"""

from __future__ import annotations

import argparse

import datasets
import torch
from transformers import CLIPTextModelWithProjection

from prodimg.text import load_clip_tokenizer


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], batch: int = 500) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch):
        tokens = tokenizer(texts[i : i + batch], padding=True, truncation=True, return_tensors="pt")
        out.append(model(**tokens).text_embeds)
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text_encoder", required=True, help="a folder with text_encoder/ (a pipeline or a train_clip.py output)")
    parser.add_argument("--dataset", default="data/fashion-catalog-32")
    parser.add_argument("--num_train", type=int, default=6000)
    parser.add_argument("--num_test", type=int, default=2000)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = CLIPTextModelWithProjection.from_pretrained(args.text_encoder, subfolder="text_encoder",
                                                        dtype=torch.float32).eval()
    tokenizer = load_clip_tokenizer()
    ds = datasets.load_from_disk(args.dataset)
    train = ds["train"].select(range(args.num_train)).remove_columns("image")
    test = ds["test"].select(range(args.num_test)).remove_columns("image")
    x_train, x_test = embed(model, tokenizer, train["text"]), embed(model, tokenizer, test["text"])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    print(f"text encoder {args.text_encoder}: {args.num_train} train / {args.num_test} test captions")
    for column in ("category", "color", "pattern"):
        n = train.features[column].num_classes
        y_train, y_test = torch.tensor(train[column]), torch.tensor(test[column])
        probe = torch.nn.Linear(x_train.shape[1], n)
        opt = torch.optim.Adam(probe.parameters(), 1e-2)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(probe(x_train), y_train).backward()
            opt.step()
        linear = (probe(x_test).argmax(1) == y_test).float().mean().item()
        centroids = torch.stack([x_train[y_train == k].mean(0) for k in range(n)])
        hit = torch.cdist(x_test, centroids).argmin(1) == y_test
        print(f"{column:9s} linear probe {linear:.3f}   nearest centroid {hit.float().mean().item():.3f}")
        names = train.features[column].names
        per_class = {names[k]: hit[y_test == k].float().mean().item() for k in range(n) if (y_test == k).any()}
        print("          nearest centroid by class: " + ", ".join(f"{k} {v:.2f}" for k, v in per_class.items()))


if __name__ == "__main__":
    main()
