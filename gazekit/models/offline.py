"""Qwen-VL processors without their video processor, for machines without torchvision.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL processors construct a video processor that imports torchvision; offline (or with a
CPU torch that PyPI's torchvision does not match) `AutoProcessor` then returns only the tokenizer. These subclasses
keep the image path exactly as the originals and skip the video one. Used by the benchmark and the test fixtures;
users can pass one to `gazekit.load(path, processor)`.
"""
from __future__ import annotations

from transformers.processing_utils import ProcessorMixin

IMAGE_TOKEN, VIDEO_TOKEN = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


def without_video_processor(processor_cls: type, *, vision_tokens: bool = False) -> type:
    """A subclass of a Qwen-VL processor class whose `__init__` skips the video processor.

    `vision_tokens=True` also sets the vision start/end tokens (Qwen3-VL's processor reads them)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = IMAGE_TOKEN, VIDEO_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        if vision_tokens:
            self.vision_start_token, self.vision_end_token = VISION_START, VISION_END
            self.vision_start_token_id = tokenizer.convert_tokens_to_ids(VISION_START)
            self.vision_end_token_id = tokenizer.convert_tokens_to_ids(VISION_END)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    name = "Offline" + processor_cls.__name__
    return type(name, (processor_cls,), {"__init__": __init__, "__module__": __name__,
                                         "__doc__": f"{processor_cls.__name__} without its video processor."})
