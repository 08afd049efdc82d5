"""DICOM result objects for the detector's findings: SR, GSPS and Secondary Capture.

Every object is built with highdicom in the source study, stamped with the producing device,
and meant to be written with ``save_as(path, enforce_file_format=True)``.
"""

from node.results.common import Algorithm, ImageFinding, ProducingDevice, SeriesDescription
from node.results.gsps import build_presentation_state, presentation_groups
from node.results.overlay import render_overlay
from node.results.secondary_capture import build_secondary_capture
from node.results.sr import build_measurement_report, build_not_analysed_report

__all__ = [
    "Algorithm",
    "ImageFinding",
    "ProducingDevice",
    "SeriesDescription",
    "build_measurement_report",
    "build_not_analysed_report",
    "build_presentation_state",
    "build_secondary_capture",
    "presentation_groups",
    "render_overlay",
]
