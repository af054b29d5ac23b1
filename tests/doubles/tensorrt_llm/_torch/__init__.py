"""``tensorrt_llm._torch`` (double)."""
