"""SCU side: echo, send, query/retrieve from other DICOM nodes, delivery log."""
