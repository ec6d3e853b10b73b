"""Prediction heads: Dual-DPT (depth + rays), DPT (mono/metric depth + sky), GS-DPT, camera."""
