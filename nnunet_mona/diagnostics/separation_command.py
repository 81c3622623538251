"""``nnUNetv2_mona_class_separation``: how well a trained model's features separate the classes on labeled volumes
it did not train on (``class_separation`` for the measures).

For each volume (nnU-Net's preprocessing of the model's plans, every slice of the 2d configuration at once) the
student's decoder map at the chosen stride is read by a forward hook, and for trainers with a representation head
(MONA) also the embedding the contrastive term trains; up to ``--pixels_per_class`` pixels of every class are
sampled per volume by the reference label at that resolution.

    nnUNetv2_mona_class_separation CHECKPOINT [CHECKPOINT ...] --images imagesTs --labels labelsTs \
        --preprocessed OUTPUT/labeled_3/nnUNet_preprocessed
"""
import os
import tempfile
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_mona.diagnostics.class_separation import class_separation, sample_pixels_per_class
from nnunet_mona.diagnostics.command_line import checkpoint_parser, parse_checkpoint_arguments, report_checkpoints
from nnunet_mona.modules.ema_teacher import unwrap_network
from nnunet_mona.modules.feature_hooks import DecoderFeatureCollector, decoder_level_strides


def labeled_cases(images: str, labels: str, file_ending: str) -> List[Tuple[List[str], str]]:
    """[(image files of the case (channel order), label file)] for every label in ``labels`` (nnU-Net raw naming:
    CASE_0000<ending> ... and CASE<ending>)."""
    for folder in (images, labels):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"folder not found: {folder}")
    cases = sorted(f[:-len(file_ending)] for f in os.listdir(labels) if f.endswith(file_ending))
    if len(cases) < 2:
        raise ValueError(f"{labels} holds {len(cases)} label file(s) ending with {file_ending!r}; class separation "
                         f"needs at least two volumes")
    out = []
    for case in cases:
        channels = sorted(f for f in os.listdir(images) if f.startswith(case + "_") and f.endswith(file_ending)
                          and f[len(case) + 1:-len(file_ending)].isdigit())
        if not channels:
            raise FileNotFoundError(f"no image {case}_0000{file_ending} in {images} for the label {case}{file_ending}")
        out.append(([os.path.join(images, c) for c in channels], os.path.join(labels, case + file_ending)))
    return out


def pad_to_multiple(x: torch.Tensor, multiple: List[int], value: float) -> torch.Tensor:
    """Pad the trailing spatial axes of (..., *S) at the end up to multiples of ``multiple``."""
    pads = []
    for size, m in zip(reversed(x.shape[-len(multiple):]), reversed(multiple)):
        pads += [0, (-size) % m]
    return F.pad(x, pads, value=value)


class FeatureReader:
    """The representations of one trained model: 'decoder' (the decoder map at ``stride``) and, for a trainer with
    MONA's representation head, 'embedding' (head + predictor, what the contrast trains)."""

    def __init__(self, trainer, stride: int):
        self.trainer = trainer
        self.network = unwrap_network(trainer.network).eval()
        pool = trainer.configuration_manager.pool_op_kernel_sizes
        if len(pool[0]) != 2:
            raise ValueError("class separation reads 2d models (the '2d' configuration)")
        self.collector = DecoderFeatureCollector(self.network)
        strides = decoder_level_strides(self.network, pool)
        matching = [i for i, s in enumerate(strides) if min(s) == stride]
        if not matching:
            raise ValueError(f"no decoder map at stride {stride}; the strides are {[min(s) for s in strides]}")
        self.level = matching[-1]
        self.total_stride = [int(s) for s in strides[0]]
        modules = getattr(trainer, "auxiliary_modules", None)
        self.head = modules["head"].eval() if modules is not None and "head" in modules else None
        self.predictor = modules["predictor"].eval() if self.head is not None and "predictor" in modules else None

    @torch.no_grad()
    def __call__(self, slices: torch.Tensor) -> Dict[str, torch.Tensor]:
        """slices (Z, C, H, W) padded to the total stride -> {name: (Z, D, h, w)}."""
        with self.collector.collecting():
            self.network(slices)
            maps = self.collector.pop()
        out = {"decoder": maps[self.level].float()}
        if self.head is not None:
            embedding = self.head(maps)
            out["embedding"] = (self.predictor(embedding) if self.predictor is not None else embedding).float()
        return out


def volume_samples(reader: FeatureReader, image_files: List[str], label_file: str, num_classes: int,
                   per_class: int, generator: torch.Generator) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """{representation: ((N, D) sampled features, (N,) labels)} of one volume."""
    trainer = reader.trainer
    preprocessor = trainer.configuration_manager.preprocessor_class(verbose=False)
    data, seg, _ = preprocessor.run_case(image_files, label_file, trainer.plans_manager,
                                         trainer.configuration_manager, trainer.dataset_json)
    slices = torch.from_numpy(np.ascontiguousarray(data)).float().permute(1, 0, 2, 3)  # (Z, C, H, W)
    labels = torch.from_numpy(np.ascontiguousarray(seg[0])).long()  # (Z, H, W), -1 outside the crop
    slices = pad_to_multiple(slices, reader.total_stride, 0.0)
    labels = pad_to_multiple(labels, reader.total_stride, -1)
    out = {}
    for name, features in reader(slices.to(trainer.device)).items():
        small = F.interpolate(labels[:, None].float(), size=features.shape[2:], mode="nearest")[:, 0].long()
        out[name] = sample_pixels_per_class(features.cpu(), small, num_classes, per_class, generator)
    return out


def separation_of_checkpoint(path: str, preprocessed_root: str, cases, stride: int, per_class: int,
                             seed: int = 0) -> dict:
    from nnunet_mona.diagnostics.checkpoint_trainer import trainer_from_checkpoint
    with tempfile.TemporaryDirectory(prefix="mona_class_separation_") as scratch:
        trainer = trainer_from_checkpoint(path, preprocessed_root, scratch)
    reader = FeatureReader(trainer, stride)
    num_classes = trainer.label_manager.num_segmentation_heads
    generator = torch.Generator().manual_seed(seed)
    collected: Dict[str, Tuple[list, list]] = {}
    for image_files, label_file in cases:
        for name, (features, labels) in volume_samples(reader, image_files, label_file, num_classes, per_class,
                                                       generator).items():
            collected.setdefault(name, ([], []))
            collected[name][0].append(features)
            collected[name][1].append(labels)
    return {"checkpoint": os.path.abspath(path), "trainer": type(trainer).__name__, "epoch": int(trainer.current_epoch),
            "stride": stride, "volumes": len(cases),
            "separation": {name: class_separation(f, l, num_classes) for name, (f, l) in collected.items()}}


def markdown_table(reports: List[dict]) -> str:
    lines = ["| trainer | representation | within-class cosine | between-class cosine | margin | "
             "nearest-centroid accuracy (balanced) |", "|---|---|---:|---:|---:|---:|"]
    for r in reports:
        for name, s in r["separation"].items():
            lines.append(f"| {r['trainer']} | {name} | {s['within']:.3f} | {s['between']:.3f} | {s['margin']:.3f} | "
                         f"{s['nearest_centroid_accuracy']:.3f} |")
    return "\n".join(lines)


def entry_point(argv=None):
    parser = checkpoint_parser("nnUNetv2_mona_class_separation",
                               "Class separation of trained models' features (decoder map; MONA's embedding too) on "
                               "labeled volumes: cosine margin and nearest-centroid accuracy.")
    parser.add_argument("--images", required=True, help="image folder (nnU-Net raw naming, CASE_0000.nii.gz)")
    parser.add_argument("--labels", required=True, help="reference label folder (CASE.nii.gz)")
    parser.add_argument("--stride", type=int, default=4, help="decoder map to read, by its stride (default 4: the "
                                                              "resolution of MONA's representation)")
    parser.add_argument("--pixels_per_class", type=int, default=200, help="pixels sampled per class and volume")
    parser.add_argument("--file_ending", default=".nii.gz")
    args = parse_checkpoint_arguments(parser, argv)
    if args.pixels_per_class < 2:
        parser.error(f"--pixels_per_class must be at least 2 (got {args.pixels_per_class})")
    cases = labeled_cases(args.images, args.labels, args.file_ending)
    print(f"{len(cases)} labeled volumes from {args.labels}")
    report_checkpoints(args, "class separation", lambda path: separation_of_checkpoint(
        path, args.preprocessed, cases, args.stride, args.pixels_per_class, args.seed), markdown_table)
