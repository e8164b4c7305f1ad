"""The sidecar's admin API over gRPC (mesh.v1.SidecarAdmin), with server reflection so that
`grpcurl -plaintext ADDRESS list` and `grpcurl ... mesh.v1.SidecarAdmin/GetClusters` work.
It serves the admin HTTP port's views (sidecar.admin.AdminViews), as Structs."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc_reflection.v1alpha import reflection
from mesh.v1 import admin_pb2, admin_pb2_grpc

from sidecar.admin import NO_CERTS, AdminViews
from sidecar.config import Address

SERVICE_NAME: str = admin_pb2.DESCRIPTOR.services_by_name["SidecarAdmin"].full_name


def _struct(value: dict[str, object]) -> Any:
    out = struct_pb2.Struct()
    out.update(value)
    return out


class SidecarAdminServicer(admin_pb2_grpc.SidecarAdminServicer):  # type: ignore[misc]
    def __init__(self, views: AdminViews) -> None:
        self.views = views

    async def Ready(self, request: Any, context: Any) -> Any:
        return admin_pb2.ReadyResponse(ready=self.views.is_ready())

    async def GetConfigDump(self, request: Any, context: Any) -> Any:
        return admin_pb2.GetConfigDumpResponse(config_dump=_struct(self.views.config_dump()))

    async def GetClusters(self, request: Any, context: Any) -> Any:
        view = self.views.clusters_view()
        return admin_pb2.GetClustersResponse(
            clusters=[_struct(c) for c in view["clusters"]],
            destinations=[_struct(d) for d in view["destinations"]],
        )

    async def GetCerts(self, request: Any, context: Any) -> Any:
        certs = self.views.certs
        if certs is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, NO_CERTS)
            raise AssertionError("abort raises")
        return admin_pb2.GetCertsResponse(certs=_struct(certs()))

    async def GetStats(self, request: Any, context: Any) -> Any:
        return admin_pb2.GetStatsResponse(stats=_struct(self.views.stats()))

    async def GetMetrics(self, request: Any, context: Any) -> Any:
        metrics = self.views.metrics
        if metrics is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this sidecar keeps no metrics")
            raise AssertionError("abort raises")
        body, content_type = metrics()
        return admin_pb2.GetMetricsResponse(text=body.decode("utf-8"), content_type=content_type)


async def start_admin_server(views: AdminViews, listen: Address) -> tuple[Any, str]:
    """Serve SidecarAdmin and reflection on `listen` (port 0: any free port): the started
    grpc.aio server and the address it bound."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    admin_pb2_grpc.add_SidecarAdminServicer_to_server(SidecarAdminServicer(views), server)
    reflection.enable_server_reflection([SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        port = server.add_insecure_port(str(listen))
    except RuntimeError as exc:  # grpcio's way of saying the bind failed
        await server.stop(None)
        raise OSError(f"listeners.admin_grpc: cannot listen on {listen}: {exc}") from None
    await server.start()
    return server, str(Address(listen.host, port))
