"""Realtime: the per-process hub (`hub`) and the SSE stream view (`stream`)."""
