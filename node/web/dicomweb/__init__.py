"""DICOMweb (PS3.18) on the node's web service: STOW-RS in, for configured peers.

``stow`` takes instances in through the DIMSE path's ingest, ``multipart`` reads their
request bodies as they stream, ``peers`` knows who may send (bearer tokens, kept hashed).
"""
