"""The organism's architecture: a real `LlavaForConditionalGeneration` (tiny CLIP vision tower + tiny Llama).

Shallow and wide on purpose (measured in the prototype): 2 text layers x 16 heads learn ordinal retrieval within the
time budget; deeper models did not, and steered worse.
"""
from __future__ import annotations

DEFAULT_ARCH = {
    "v_hidden": 64, "v_inter": 128, "v_layers": 2, "v_heads": 4, "patch": 16,   # vision tower (per 32 px tile)
    "hidden": 128, "inter": 256, "layers": 3, "heads": 16,                       # language model
}


def build_model(processor, arch: dict | None = None, seed: int = 0):
    """A freshly initialised organism (weights drawn under `torch.manual_seed(seed)`)."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    a = dict(DEFAULT_ARCH, **(arch or {}))
    if a["patch"] != processor.patch_size:
        raise ValueError(f"arch patch {a['patch']} != processor patch_size {processor.patch_size}")
    tok = processor.tokenizer
    vc = CLIPVisionConfig(hidden_size=a["v_hidden"], intermediate_size=a["v_inter"], num_hidden_layers=a["v_layers"],
                          num_attention_heads=a["v_heads"], image_size=processor.tile_size, patch_size=a["patch"],
                          num_channels=3, projection_dim=a["v_hidden"])
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=a["hidden"], intermediate_size=a["inter"],
                     num_hidden_layers=a["layers"], num_attention_heads=a["heads"], num_key_value_heads=a["heads"],
                     head_dim=a.get("head_dim") or a["hidden"] // a["heads"], max_position_embeddings=256, rope_theta=10000.0,
                     tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id)
    conf = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=processor.image_token_id,
                       vision_feature_select_strategy="default", vision_feature_layer=-1,
                       projector_hidden_act="gelu", tie_word_embeddings=True,
                       image_seq_length=processor.tokens_per_tile)
    conf.text_config._attn_implementation = "sdpa"
    conf.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(conf)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model
