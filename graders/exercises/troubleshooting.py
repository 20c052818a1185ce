"""Phase 4 checks: 4.3 troubleshooting (reproducible failures, their diagnosis and fix)."""

from __future__ import annotations
