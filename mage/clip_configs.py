"""The open_clip CLIP configs of the built-in tiny towers and of the synthetic world's encoders.

Plain data, in a module of its own so that what only needs the configs (the world's asset
fingerprints, `mage.world.encoders`) does not import open_clip and timm, which take seconds.
`mage.vision` builds towers from them.
"""

# Text towers only matter to whoever pretrains these CLIPs; the vision tower keeps `.visual`.
_TINY_TEXT_CFG = {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
WORLD_TEXT_CFG = {"context_length": 32, "vocab_size": 1024, "width": 64, "heads": 4, "layers": 2}
TINY_VIT_CLIP_CFG = dict(embed_dim=32, text_cfg=_TINY_TEXT_CFG, vision_cfg=dict(
    image_size=32, patch_size=8, width=32, layers=2, head_width=16))  # fmt: skip
TINY_RESNET_CLIP_CFG = dict(embed_dim=32, text_cfg=_TINY_TEXT_CFG, vision_cfg=dict(
    image_size=64, layers=[1, 1, 1, 1], width=8))  # fmt: skip
# The synthetic world's encoders (kwargs of open_clip.CLIP); mage.world.assets pretrains them and
# may replace text_cfg (e.g. vocab_size of the world tokenizer): the JSON it writes is what loads.
WORLD_VIT_CLIP_CFG = dict(embed_dim=64, text_cfg=WORLD_TEXT_CFG, vision_cfg=dict(
    image_size=64, patch_size=8, width=64, layers=2, head_width=16))  # fmt: skip
WORLD_RESNET_CLIP_CFG = dict(embed_dim=64, text_cfg=WORLD_TEXT_CFG, vision_cfg=dict(
    image_size=64, layers=[1, 1, 1, 1], width=16))  # fmt: skip
BUILTIN_CLIP_CFGS = {"tiny-vit": TINY_VIT_CLIP_CFG, "tiny-resnet": TINY_RESNET_CLIP_CFG}
WORLD_CLIP_CFGS = {"world-vit": WORLD_VIT_CLIP_CFG, "world-resnet": WORLD_RESNET_CLIP_CFG}
