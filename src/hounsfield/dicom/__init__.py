"""DICOM helpers shared by every stage: UIDs, value decoding, validators, transfer syntaxes."""
