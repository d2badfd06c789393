"""Helpers shared by tests."""

import torch


def randomize_head_biases(tv_model, std: float = 2.0) -> None:
    """Give a random-weight torchvision detector confident, varied scores.

    Fresh heads score every class near the prior (SSD ~1/K, RetinaNet 0.01),
    below or at the score thresholds; random biases on the final classifier
    convolutions give a realistic spread of candidates to compare.
    """
    g = torch.Generator().manual_seed(1)
    head = tv_model.head.classification_head
    convs = [head.cls_logits] if hasattr(head, "cls_logits") else [
        [m for m in mod.modules() if isinstance(m, torch.nn.Conv2d)][-1] for mod in head.module_list
    ]
    with torch.no_grad():
        for conv in convs:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * std)


def synth_split(tmp_path_factory, name: str, *, num_images: int, seed: int, splits, image_size: int = 320):
    """A small synthetic data set in a fresh temporary folder: (image folder, {split: annotation file})."""
    from edgeanchor.datasets.synth import generate

    info = generate(tmp_path_factory.mktemp(name), num_images=num_images, seed=seed, image_size=image_size,
                    splits=splits, workers=1)
    return info["image_dir"], info["annotations"]
