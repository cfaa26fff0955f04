"""What birnn needs from the machine: devices and threads, the glibc allocator, process ranks (``Dist``, DDP).

Low pieces that data and models may use. Imports only ``birnn.schema``.
"""
