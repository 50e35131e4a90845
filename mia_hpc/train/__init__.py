"""Shadow training: the batched trainer (``batched``) and the one-at-a-time reference (``loop``)."""
