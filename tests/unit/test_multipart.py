"""Form uploads (multipart/form-data) read as TorchServe's handlers read them: the parser alone."""

import pytest
import requests

from gateway.errors import GatewayError
from gateway.multipart import Form, parse


def encoded(files=None, data=None) -> tuple[bytes, str]:
    """A body and Content-Type exactly as `requests.post(files=..., data=...)` sends them."""
    prepared = requests.Request("POST", "http://x/", files=files, data=data).prepare()
    return prepared.body, prepared.headers["Content-Type"]


def field(body: bytes, content_type: str):
    return Form.from_content_type(content_type).field(body)


def test_requests_files_and_fields_are_read_by_name():
    body, content_type = encoded(files={"data": ("kitten.jpg", b"\xff\xd8\xffJPEG\r\n--not-a-boundary", "image/jpeg")})
    part = field(body, content_type)
    assert (part.name, part.filename, part.content_type, part.body) == ("data", "kitten.jpg", "image/jpeg", b"\xff\xd8\xffJPEG\r\n--not-a-boundary")
    body, content_type = encoded(files={"body": (None, '{"text": "x"}')})  # a plain field
    assert field(body, content_type).body == b'{"text": "x"}'


@pytest.mark.parametrize(
    "files, data, chosen",
    [
        ({"file": ("a.jpg", b"A")}, None, b"A"),  # the only field, whatever its name
        ({"data": ("a.jpg", b"A"), "other": ("b.jpg", b"B")}, None, b"A"),  # `data` first, as the handlers read it
        ({"body": ("a.jpg", b"A")}, {"meta": "m"}, b"A"),  # then `body`
        ({"data": ("a.jpg", b"A"), "body": ("b.jpg", b"B")}, None, b"A"),
    ],
)
def test_the_field_the_handler_reads_is_chosen(files, data, chosen):
    assert field(*encoded(files=files, data=data)).body == chosen


def test_curl_style_form_with_quoted_boundary_and_preamble():
    body = (
        b"preamble to ignore\r\n--XyZ\r\nContent-Disposition: form-data; name=\"data\"; filename=\"k.png\"\r\n"
        b"Content-Type: image/png\r\n\r\n\x89PNG\r\n--XyZ--\r\n"
    )
    part = field(body, 'multipart/form-data; boundary="XyZ"')
    assert (part.content_type, part.body) == ("image/png", b"\x89PNG")


@pytest.mark.parametrize(
    "body, content_type, words",
    [
        (b"--b\r\nContent-Disposition: form-data; name=data\r\n\r\nA\r\n--b--", "multipart/form-data", "without a boundary"),
        (b"--b--\r\n", "multipart/form-data; boundary=b", "no part"),
        (b"nothing here", "multipart/form-data; boundary=b", "no part"),
        (b"--b\r\nContent-Disposition: form-data; name=data\r\n\r\nA", "multipart/form-data; boundary=b", "closing boundary"),
        (b"--b\r\nContent-Type: image/png\r\n\r\nA\r\n--b--", "multipart/form-data; boundary=b", "Content-Disposition"),
        (b"--b\r\nContent-Disposition: form-data; name=data\r\nA\r\n--b--", "multipart/form-data; boundary=b", "blank line"),
        (b"--bjunk\r\n\r\nA\r\n--b--", "multipart/form-data; boundary=b", "malformed"),
    ],
)
def test_malformed_forms_are_a_400_naming_what_is_wrong(body, content_type, words):
    with pytest.raises(GatewayError) as refused:
        field(body, content_type)
    assert refused.value.status == 400 and words in refused.value.message


@pytest.mark.parametrize(
    "files, words",
    [
        ([("data", ("a.jpg", b"A")), ("data", ("b.jpg", b"B"))], "2 'data' fields"),  # two images where one is expected
        ({"one": ("a.jpg", b"A"), "two": ("b.jpg", b"B")}, "name it 'data'"),
    ],
)
def test_ambiguous_forms_are_refused_not_guessed(files, words):
    with pytest.raises(GatewayError) as refused:
        field(*encoded(files=files))
    assert refused.value.status == 400 and words in refused.value.message


def test_part_count_is_bounded():
    body, content_type = encoded(files={f"f{index}": (None, "x") for index in range(17)})
    with pytest.raises(GatewayError, match="at most 16"):
        parse(body, Form.from_content_type(content_type).boundary)
