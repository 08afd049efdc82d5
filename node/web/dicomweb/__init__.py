"""DICOMweb on the node's web service (PS3.18): STOW-RS in, QIDO-RS and WADO-RS out."""
