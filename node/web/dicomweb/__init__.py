"""DICOMweb on the node's web service (PS3.18): STOW-RS in, QIDO-RS and WADO-RS out.

``stow`` takes instances in through the DIMSE path's ingest for configured peers (bearer
tokens, kept hashed: ``peers``), ``multipart`` reads their request bodies as they stream;
``qido`` and ``wado`` serve what the node holds, its own results included, to the
console's logins (``access``).
"""
