"""Phase 4 checks: 4.2 operations and monitoring (logged predictions, drift, A/B tests)."""

from __future__ import annotations
