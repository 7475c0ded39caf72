"""The malformed-input corpus (tests/corpus/): each file is answered as its manifest says, the
server stays up, and the good records sent before and after each one are all stored intact."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from labtel.collector.otlp.signals import LOGS
from tests.helpers import LabtelServer, log_record, logs_request

CORPUS = Path(__file__).parent / "corpus"
sys.path.insert(0, str(CORPUS))
import make_corpus  # noqa: E402

MANIFEST: list[dict[str, Any]] = yaml.safe_load((CORPUS / "manifest.yaml").read_text())
GOOD = "corpus-good"


def test_committed_corpus_is_what_the_script_writes() -> None:
    """The small committed files are exactly make_corpus.py's output (nothing edited by hand)."""
    for name, make in make_corpus.SMALL.items():
        assert (CORPUS / name).read_bytes() == make(), name
    names = {entry["file"] for entry in MANIFEST}
    assert names == set(make_corpus.SMALL) | set(make_corpus.BIG)


def _grpc(server: LabtelServer, body: bytes) -> tuple[str, str, bytes]:
    """(status code name, details, response bytes) of one raw logs Export call."""
    with grpc.insecure_channel(server.grpc, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        call = channel.unary_unary(LOGS.grpc_method, request_serializer=None, response_deserializer=None)
        try:
            response: bytes = call(body, timeout=60)
        except grpc.RpcError as error:
            return error.code().name, error.details() or "", b""
        return "OK", "", response


def _http(server: LabtelServer, body: bytes, content_type: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """(status, error message, body) of one POST /v1/logs."""
    response = httpx.post(
        server.http + "/v1/logs", content=body, headers={"Content-Type": content_type, **headers}, timeout=60
    )
    message = ""
    if response.status_code != 200:
        if response.headers.get("content-type", "").startswith("application/json"):
            message = response.json().get("message", "")
        else:
            status = status_pb2.Status()
            status.ParseFromString(response.content)
            message = status.message
    return response.status_code, message, response.content


def _send_good(server: LabtelServer, protocol: str, tag: str) -> list[str]:
    bodies = [f"{tag}:{n}" for n in range(2)]
    data = logs_request([log_record(b) for b in bodies], resource={"service.name": GOOD}).SerializeToString()
    if protocol == "grpc":
        assert _grpc(server, data)[0] == "OK", tag
    else:
        assert _http(server, data, "application/x-protobuf", {})[0] == 200, tag
    return bodies


def _check(entry: dict[str, Any], protocol: str, answer: tuple[Any, str, bytes]) -> None:
    status, message, body = answer
    expected = entry["grpc"] if protocol == "grpc" else entry["http"]
    where = f"{entry['file']} over {protocol}"
    assert status == expected, f"{where}: {status} {message!r}"
    fragment = entry.get("message")
    if "rejected" in entry:
        response = ExportLogsServiceResponse()
        response.ParseFromString(body)  # both protocols answer a partial success in protobuf
        assert response.partial_success.rejected_log_records == entry["rejected"], where
        assert fragment in response.partial_success.error_message, (where, response.partial_success.error_message)
    elif fragment:
        assert fragment in message, f"{where}: {message!r}"


@pytest.mark.timeout(240)
def test_corpus_is_answered_and_good_records_survive(server: LabtelServer, tmp_path: Path) -> None:
    big = tmp_path / "big"
    make_corpus.write(big, make_corpus.BIG)
    good: list[str] = []
    stored = 0
    for number, entry in enumerate(MANIFEST):
        data = ((big if entry.get("big") else CORPUS) / entry["file"]).read_bytes()
        for protocol in entry["protocols"]:
            good += _send_good(server, protocol, f"{protocol}:{number}:before")
            if protocol == "grpc":
                answer: tuple[Any, str, bytes] = _grpc(server, data)
            else:
                content_type = entry.get("content_type", "application/x-protobuf")
                answer = _http(server, data, content_type, entry.get("headers", {}))
            _check(entry, protocol, answer)
            stored += entry.get("stored", 0)
            assert server.process is not None
            assert server.process.poll() is None, f"server died on {entry['file']}"
            good += _send_good(server, protocol, f"{protocol}:{number}:after")
    server.wait_until_stored()
    assert sorted(e["body"] for e in server.all_events(service=GOOD, limit=1000)) == sorted(good)
    entries = server.all_events(service=make_corpus.SERVICE, limit=1000)
    assert len(entries) == stored, sorted(e["body"][:40] for e in entries)
    bodies = [e["body"] for e in entries]
    assert bodies.count("b" * 1_000_000) == 2  # the 1 MB body, whole, once per protocol
    assert sorted(b for b in bodies if b.startswith("partial")) == sorted(["partial 0", "partial 2", "partial 4"] * 2)
    zero_ids = [(e["trace_id"], e["span_id"]) for e in entries if e["body"] == "zero ids"]
    assert zero_ids == [("", "")] * 3  # all zero bytes: "not set" (OTLP), stored as ''
    nan = next(e for e in entries if e["body"] == "nan and inf")
    assert nan["attributes"] == {"nan": "nan", "inf": "inf", "ninf": "-inf"}
