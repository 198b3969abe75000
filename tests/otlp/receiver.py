#!/usr/bin/env python3
"""OTLP/HTTP test receiver: decodes every request with the official schema
(PyPI `opentelemetry-proto`) and appends it to a JSON-lines file.

    receiver.py OUT.jsonl [--fail-first N]

Prints `listening PORT` (127.0.0.1, a free port) once ready. Each line of
OUT is {"path", "bytes" (the protobuf body as received, before any gzip
decoding), "request" (the decoded message, proto field names)}. With
--fail-first N the first N requests get 503, to exercise retries.
"""
import gzip
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

KINDS = {
    "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse),
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse),
}

out_path = sys.argv[1]
fail_first = int(sys.argv[sys.argv.index("--fail-first") + 1]) if "--fail-first" in sys.argv else 0
seen = 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        seen += 1
        if seen <= fail_first:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        kind = KINDS.get(self.path)
        body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
        if kind is None or "protobuf" not in self.headers.get("Content-Type", ""):
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        req = kind[0]()
        req.ParseFromString(body)
        with open(out_path, "a") as f:
            f.write(json.dumps({"path": self.path, "bytes": len(body),
                                "request": MessageToDict(req, preserving_proto_field_name=True)}) + "\n")
        resp = kind[1]().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(resp)))
        self.end_headers()
        self.wfile.write(resp)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
