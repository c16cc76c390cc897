from pitdist.models.pit import PiT, build_model, pixels_to_tokens

__all__ = ["PiT", "build_model", "pixels_to_tokens"]
