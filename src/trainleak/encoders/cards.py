"""Model cards of the named encoders: what each published model expects, and its terms.

A card holds the facts an encoder needs to feed a published model exactly as
its authors do (input size, crop, colour order, normalisation, which output)
and the provenance a report must carry (licence, non-commercial flag, paper,
where the weights are published, their pinned SHA-256). It is data only: the
CLI imports it to name the models without loading numpy.

Where each fact comes from (read in the publishers' code, see ``source``):

* ``arcface`` - insightface ``model_zoo/arcface_onnx.py``: the aligned crop
  (a BGR OpenCV image) goes through ``cv2.dnn.blobFromImages(..., 1/127.5,
  (112, 112), (127.5,)*3, swapRB=True)``, so the model takes **RGB**,
  ``(x - 127.5) / 127.5``; the crop is ``face_align.norm_crop``: a similarity
  transform of the 5 landmarks onto the ArcFace template, ``cv2.warpAffine``
  (bilinear, zero border). insightface's README: the packs' models are for
  non-commercial research only.
* ``adaface`` - AdaFace ``inference.py`` ``to_input``: ``((rgb[:, :, ::-1] /
  255) - 0.5) / 0.5``, i.e. **BGR**, the same numbers as ArcFace's; alignment
  by its MTCNN code to ``get_reference_facial_points(default_square=True)``,
  which is the ArcFace template to four decimals. The model returns
  ``(feature, norm)``: the feature is output 0.
* ``sface`` - OpenCV ``FaceRecognizerSF`` (``face_recognize.cpp``):
  ``alignCrop`` warps with the ArcFace template (bilinear), ``feature`` runs
  ``blobFromImage(aligned, 1, (112, 112), (0, 0, 0), swapRB=true)``: **RGB**,
  raw 0-255. Cosine threshold 0.363 from opencv_zoo ``sface.py``. Apache-2.0.
  The SHA-256 is the Git LFS object id of ``face_recognition_sface_2021dec.onnx``
  at opencv_zoo's main branch (checked in its pointer file, 2025-05-29).
* ``sscd`` - the SSCD README: ``Resize([320, 320])`` ("skew_320", the default
  here, batchable) or ``Resize(288)`` of the short edge ("small_288"), then
  ``ToTensor`` and ImageNet ``Normalize``; RGB; torchvision's default bilinear
  resampling; 512-d L2-normalised output; cosine > 0.75 is a copy at 90%
  precision on DISC. The codebase and weights are CC-BY-NC 4.0.
* ``dinov2-s14`` - DINOv2 ``data/transforms.py``
  ``make_classification_eval_transform``: ``Resize(256, bicubic)`` of the short
  edge, ``CenterCrop(224)``, ImageNet ``Normalize``; RGB. The embedding is the
  CLS token after the final norm (what the hub model's ``forward`` returns),
  384-d. Apache-2.0.

Assumptions (not checkable here, stated in each card's ``assumptions``):
dlib's 68 landmarks stand in for the 5 points the publishers' detectors give
(eye centres from the eye contours, nose tip 30, mouth corners 48 and 54);
no publisher gives an ONNX or TorchScript file for AdaFace or DINOv2, so their
file names are ours and the user exports the model; insightface and SSCD
publish no checksums, so their pins are unknown (``sha256=None``) and
``--allow-download`` refuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The ArcFace 5-point template for a 112 x 112 crop, in pixel-index
#: coordinates (x, y): left eye, right eye (as seen in the image), nose tip,
#: left and right mouth corners. insightface ``utils/face_align.py``
#: ``arcface_dst``; OpenCV ``FaceRecognizerSF`` uses the same points.
ARCFACE_TEMPLATE: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

Crop = Literal["align5", "square", "short", "short_center"]


@dataclass(frozen=True)
class ModelCard:
    """What a published model expects and what its weights may be used for.

    Attributes:
        name: the registry name (``--encoder NAME``).
        file_name: the weights file looked for in ``$TRAINLEAK_MODELS``; its
            suffix picks the runtime (``.onnx``: onnxruntime, else TorchScript).
        dim: embedding dimension.
        crop: ``align5`` (5-landmark similarity alignment of a detected face),
            ``square`` (the whole image resized to ``size``), ``short`` (short
            edge to ``resize_to``, aspect kept) or ``short_center`` (then a
            centre crop of ``size``).
        size: model input ``(height, width)``.
        resize_to: short-edge length for ``short`` and ``short_center``.
        resample: ``bilinear`` or ``bicubic``.
        channels: channel order the model takes.
        mean: subtracted per channel, in 0-255 units, in R, G, B order.
        std: divisor per channel, in 0-255 units, in R, G, B order.
        output: index of the model output that holds the embedding.
        default_threshold: cosine operating point (see ``threshold_note``).
        threshold_note: where the operating point comes from.
        licence: the weights' licence, as published.
        non_commercial: the weights may not be used commercially.
        paper: the method and the weights.
        url: where the publisher serves this exact file, or None.
        sha256: its pinned SHA-256, or None when none could be verified.
        get: how a user obtains the file (printed in the fix-it error).
        source: the publisher code or documents the preprocessing was read from.
        assumptions: facts taken as true but not verified.

    """

    name: str
    file_name: str
    dim: int
    crop: Crop
    size: tuple[int, int]
    channels: Literal["rgb", "bgr"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_threshold: float
    threshold_note: str
    licence: str
    non_commercial: bool
    paper: str
    get: str
    source: str
    resize_to: int = 0
    resample: Literal["bilinear", "bicubic"] = "bilinear"
    output: int = 0
    url: str | None = None
    sha256: str | None = None
    assumptions: tuple[str, ...] = ()
    #: What the model looks for (see :data:`trainleak.encoders.base.Kind`).
    kind: Literal["copy", "identity"] = "copy"


_LANDMARKS = (
    "dlib's 68-point landmarks stand in for the detector's 5 points (eye centres = mean of "
    "each eye contour, nose tip = point 30, mouth corners = points 48 and 54)"
)
_UNCALIBRATED = (
    "placeholder operating point (cosine {t}) chosen by trainleak, not published for this "
    "model: uncalibrated; pass a holdout (--holdout) or set --threshold"
)

CARDS: dict[str, ModelCard] = {
    card.name: card
    for card in (
        ModelCard(
            name="arcface",
            file_name="w600k_r50.onnx",
            dim=512,
            crop="align5",
            kind="identity",
            size=(112, 112),
            channels="rgb",
            mean=(127.5, 127.5, 127.5),
            std=(127.5, 127.5, 127.5),
            default_threshold=0.35,
            threshold_note=_UNCALIBRATED.format(t=0.35),
            licence="insightface model pack buffalo_l: non-commercial research use only",
            non_commercial=True,
            paper="Deng et al., ArcFace (CVPR 2019); insightface buffalo_l w600k_r50 "
            "(IResNet-50, WebFace600K)",
            get="unzip w600k_r50.onnx from insightface's buffalo_l.zip "
            "(github.com/deepinsight/insightface, python-package model zoo)",
            source="insightface python-package/insightface/model_zoo/arcface_onnx.py, "
            "utils/face_align.py",
            assumptions=(_LANDMARKS, "published only inside buffalo_l.zip, no checksum"),
        ),
        ModelCard(
            name="adaface",
            file_name="adaface_ir101_webface12m.onnx",
            dim=512,
            crop="align5",
            kind="identity",
            size=(112, 112),
            channels="bgr",
            mean=(127.5, 127.5, 127.5),
            std=(127.5, 127.5, 127.5),
            default_threshold=0.35,
            threshold_note=_UNCALIBRATED.format(t=0.35),
            licence="AdaFace code and checkpoints (github.com/mk-minchul/AdaFace); trained on "
            "WebFace12M / MS1MV2, whose terms allow non-commercial research only",
            non_commercial=True,
            paper="Kim, Jain & Liu, AdaFace: Quality Adaptive Margin (CVPR 2022); IR-101",
            get="export the published IR-101 checkpoint to ONNX (or TorchScript) yourself; "
            "trainleak never loads the pickled .ckpt",
            source="AdaFace inference.py (to_input), face_alignment/align.py, README",
            assumptions=(
                _LANDMARKS,
                "no ONNX/TorchScript file is published: the file name is trainleak's",
                "non-commercial through its training data's terms (no weights licence found)",
            ),
        ),
        ModelCard(
            name="sface",
            file_name="face_recognition_sface_2021dec.onnx",
            dim=128,
            crop="align5",
            kind="identity",
            size=(112, 112),
            channels="rgb",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            default_threshold=0.363,
            threshold_note="published operating point (cosine 0.363, opencv_zoo sface.py); "
            "uncalibrated for your data: pass a holdout (--holdout) or set --threshold",
            licence="Apache-2.0 (opencv_zoo models/face_recognition_sface)",
            non_commercial=False,
            paper="Zhong et al., SFace: Sigmoid-Constrained Hypersphere Loss (TIP 2021)",
            get="download face_recognition_sface_2021dec.onnx from opencv_zoo, or pass "
            "--allow-download",
            source="OpenCV modules/objdetect/src/face_recognize.cpp; opencv_zoo sface.py",
            url="https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/"
            "face_recognition_sface_2021dec.onnx",
            sha256="0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
            assumptions=(_LANDMARKS,),
        ),
        ModelCard(
            name="sscd",
            file_name="sscd_disc_mixup.torchscript.pt",
            dim=512,
            crop="square",
            size=(320, 320),
            resize_to=288,
            channels="rgb",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            default_threshold=0.75,
            threshold_note="published operating point (cosine 0.75: copies at 90% precision "
            "on DISC, SSCD README); uncalibrated for your data: pass a holdout or --threshold",
            licence="CC-BY-NC 4.0 (SSCD code and weights)",
            non_commercial=True,
            paper="Pizzi et al., A Self-Supervised Descriptor for Image Copy Detection "
            "(CVPR 2022); sscd_disc_mixup (ResNet-50)",
            get="download sscd_disc_mixup.torchscript.pt from dl.fbaipublicfiles.com/"
            "sscd-copy-detection/ (no checksum is published, so not with --allow-download)",
            source="facebookresearch/sscd-copy-detection README (Preprocessing, Torchscript)",
            url="https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt",
            assumptions=("no checksum published",),
        ),
        ModelCard(
            name="dinov2-s14",
            file_name="dinov2_vits14.onnx",
            dim=384,
            crop="short_center",
            size=(224, 224),
            resize_to=256,
            resample="bicubic",
            channels="rgb",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            default_threshold=0.8,
            threshold_note=_UNCALIBRATED.format(t=0.8),
            licence="Apache-2.0 (DINOv2 code and weights)",
            non_commercial=False,
            paper="Oquab et al., DINOv2 (TMLR 2024); ViT-S/14 CLS token",
            get="export torch.hub 'facebookresearch/dinov2' dinov2_vits14 to ONNX (or "
            "TorchScript) with a 1x3x224x224 input; its forward returns the CLS token",
            source="facebookresearch/dinov2 dinov2/data/transforms.py, hubconf",
            assumptions=(
                "only a pickled state dict is published: the ONNX file name is trainleak's",
            ),
        ),
    )
}
