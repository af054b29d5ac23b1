"""``tensorrt_llm.executor`` (double)."""
