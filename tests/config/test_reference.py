"""docs/configuration.md is what ``python -m config.reference`` prints, so it cannot drift."""

from __future__ import annotations

from pathlib import Path

from config.reference import example_comments, reference
from config.settings import Settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_is_what_the_settings_and_example_give():
    assert PAGE.read_text() == reference(), (
        "docs/configuration.md is stale: run `python -m config.reference > "
        "docs/configuration.md`")


def test_every_setting_is_in_the_reference_with_its_default():
    page = PAGE.read_text()
    for section in Settings.model_fields:
        assert f"## `{section}" in page
    assert "| `port` | integer | `11112` | >= 1, <= 65535 |" in page
    assert "| `max_upload_bytes` | integer | `52428800` |" in page


def test_comments_are_read_for_nested_and_listed_keys():
    text = ("dicom:\n  # Called AE title.\n  ae_title: X\n  tls:\n    certificate:  # PEM\n"
            "destinations:\n  - name: A\n    # Base URL.\n    url: http://x\n")

    comments = example_comments(text)

    assert comments == {"dicom.ae_title": "Called AE title.", "dicom.tls.certificate": "PEM",
                        "destinations[].url": "Base URL."}
