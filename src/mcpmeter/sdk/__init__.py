"""The recorder SDK: record tool calls in-process and ship them without slowing the host."""
