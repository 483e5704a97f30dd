"""Models behind one interface (:class:`VisionLanguageModel`): MERU (loads the official
checkpoints), MERU's CLIP baseline, and any open_clip model; tiny random configs for tests."""
from .base import GEOMETRIES, VisionLanguageModel  # noqa: F401
from .io import (  # noqa: F401
    MODEL_FACTORIES, CheckpointError, CheckpointKeyError, infer_meru_config, load_model,
    load_open_clip_weights, load_state_dict_strict, save_model,
)
from .meru import (  # noqa: F401
    MERU, MERUCLIP, VIT_ARCHS, MERUConfig, TextTransformer, build_meru_family, clip_vit_b,
    clip_vit_l, clip_vit_s, meru_vit_b, meru_vit_l, meru_vit_s, sincos_position_embedding,
    tiny_clip, tiny_meru, tokenize,
)
from .openclip_adapter import TINY_OPEN_CLIP_CFG, OpenCLIPModel, tiny_open_clip  # noqa: F401
from .transforms import image_transform  # noqa: F401
