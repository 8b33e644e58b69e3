"""A minimal OTLP/gRPC metrics receiver for hostprobe's tests, built on the
official generated classes (PyPI: opentelemetry-proto) and grpcio.

Writes every accepted ExportMetricsServiceRequest as one JSON line (protobuf
JSON mapping) to --out, and answers UNAVAILABLE for the first --unavailable
seconds, counting the refusals in --out + ".refused".
"""
import argparse
import json
import time
from concurrent import futures

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, out, unavailable_until):
        self.out = out
        self.unavailable_until = unavailable_until
        self.refused = 0

    def Export(self, request, context):
        if time.time() < self.unavailable_until:
            self.refused += 1
            with open(self.out + ".refused", "w") as f:
                f.write(str(self.refused))
            context.abort(grpc.StatusCode.UNAVAILABLE, "test receiver: not accepting yet")
        with open(self.out, "a") as f:
            f.write(json.dumps(MessageToDict(request)) + "\n")
        return metrics_service_pb2.ExportMetricsServiceResponse()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--unavailable", type=float, default=0.0)
    a = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
        Receiver(a.out, time.time() + a.unavailable), server
    )
    server.add_insecure_port(f"127.0.0.1:{a.port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
