"""Text from portal rows, made safe for subject lines and the console's Markdown."""

from mm_orchestration.platform.outbox.mailer import Email
from mm_orchestration.platform.text import markdown_cell, markdown_table, one_line


def test_one_line_keeps_text_visible_and_short():
    assert one_line("Summer\r\nCampaign\tcut") == "Summer  Campaign cut"
    # Bidirectional and zero-width marks could reorder or hide what a reader sees.
    assert one_line("abc\u202edcba\u200b\x00") == "abc?dcba??"
    assert one_line("x" * 300, 10) == "x" * 9 + "…"
    assert one_line(42) == "42"


def test_markdown_cells_are_literal():
    assert markdown_cell("[a](http://b) <i>|") == "\\[a\\](http\\://b) \\<i\\>\\|"
    assert markdown_cell("us-west-2 asset.viewed") == "us-west-2 asset.viewed"
    # No automatic links either (remark-gfm makes them of bare URLs, www. and addresses).
    assert markdown_cell("http://x.example www.x.example WWW.x a@x.example") == (
        "http\\://x.example www\\.x.example WWW\\.x a\\@x.example"
    )
    assert markdown_table(["a", "n"], [("*x*", 3)], numeric=(1,)) == (
        "| a | n |\n| --- | ---: |\n| \\*x\\* | 3 |\n"
    )


def test_every_email_subject_is_one_visible_line():
    email = Email(
        "k", "a@example.com", "Share link expired: Cut\nBcc: x@evil\u202e" + "y" * 300, ""
    )
    assert "\n" not in email.subject and "\u202e" not in email.subject
    assert email.subject.startswith("Share link expired: Cut Bcc: x@evil?")
    assert len(email.subject) == 200
