"""Pictures for tests, drawn by the demo generator and judged by the demo model (no shop models:
the Oscar test project uses them too)."""

from __future__ import annotations


class Pictures:
    """Drawn pictures the demo model is known to pass (``safe``) or flag (``knife``) with the
    demo's moderation settings: a test of the quarantine never rests on a knife the model
    happens to miss (it flags 97-100 % of them; test_demo_model holds it to that)."""

    def __init__(self, clip, count: int = 8, seed: int = 515) -> None:
        import numpy as np

        from clip_search.encoders import ImageEncoder, TextEncoder
        from clip_search.moderation import Moderator
        from shop_demo.catalog.generator import generate_catalog

        specs = generate_catalog(40 * count, seed=seed)
        data = [spec.png_bytes(64) for spec in specs]
        vectors = np.stack([r.vector for r in ImageEncoder(clip).encode_bytes(data)])
        verdicts = Moderator(TextEncoder(clip), clip.logit_scale).judge(vectors)
        judged = list(zip(specs, data, verdicts, strict=True))
        self.safe = [d for spec, d, verdict in judged if not spec.is_unsafe and not verdict.is_flagged]
        self.knife = [d for spec, d, verdict in judged if spec.is_unsafe and verdict.is_flagged]
        assert len(self.safe) >= count and len(self.knife) >= 2, (len(self.safe), len(self.knife))
