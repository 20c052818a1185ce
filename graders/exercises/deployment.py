"""Phase 4 checks: 4.1 infrastructure planning (cluster sizing, model registry, Ray Serve)."""

from __future__ import annotations
