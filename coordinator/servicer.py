"""CoordinatorService: decode -> job manager -> encode."""

from __future__ import annotations

import asyncio

from alignmesh.coordinator import convert
from alignmesh.coordinator.jobs import JobManager
from alignmesh.coordinator.store import JobStore
from alignmesh.protos.coordinator.v1 import coordinator_pb2, coordinator_pb2_grpc
from alignmesh.services.common.errors import ConfigError, InvalidArgument
from alignmesh.services.common.settings import ClusterConfig


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(self, manager: JobManager):
        self.manager = manager

    async def SubmitJob(self, request, context):
        if not request.config_yaml.strip():
            raise InvalidArgument("config_yaml", "is empty; send the job config as YAML")
        try:
            rec = self.manager.submit(request.config_yaml, request.name)
        except ConfigError as exc:
            raise InvalidArgument("config_yaml", str(exc)) from None
        return convert.job_to_proto(rec)

    async def GetJob(self, request, context):
        return convert.job_to_proto(self.manager.get(request.job_id))

    async def ListJobs(self, request, context):
        size, after, state = convert.list_request_from_proto(request)
        page = self.manager.store.page(size + 1, after, state)  # one more: is there a next page?
        token = convert.page_token(page[size - 1]) if len(page) > size else ""
        return coordinator_pb2.ListJobsResponse(jobs=[convert.job_to_proto(r) for r in page[:size]],
                                                next_page_token=token)

    async def WatchJob(self, request, context):
        async for ev in self.manager.watch(request.job_id, request.after_seq, request.replay_only):
            yield convert.event_to_proto(ev)

    async def CancelJob(self, request, context):
        return convert.job_to_proto(self.manager.cancel(request.job_id))

    async def PauseJob(self, request, context):
        return convert.job_to_proto(self.manager.pause(request.job_id))

    async def ResumeJob(self, request, context):
        return convert.job_to_proto(self.manager.resume(request.job_id))

    async def UpdateJob(self, request, context):
        return convert.job_to_proto(self.manager.update(request.job_id, dict(request.knobs)))

    async def RegisterMember(self, request, context):
        m = self.manager.membership
        view = m.register(request.role, request.address, request.lease_s, request.leaving, request.metrics_address)
        self.manager.write_targets()
        return convert.member_to_proto(view)

    async def ListMembers(self, request, context):
        m = self.manager.membership
        return coordinator_pb2.ListMembersResponse(members=[convert.member_to_proto(v) for v in m.members()],
                                                   desired=m.desired)

    async def ScaleRole(self, request, context):
        replicas = self.manager.membership.scale(request.role, request.replicas)
        return coordinator_pb2.ScaleRoleResponse(role=request.role, replicas=replicas)


def build_coordinator(cluster: ClusterConfig):
    if not cluster.endpoints.get("trainer"):
        raise ConfigError("endpoints.trainer: the coordinator needs the trainer's address (endpoints.trainer: "
                          "[host:port])")
    # Rollout, reward and reference replicas may also register themselves (serve --register-with): a job that
    # starts while a role has none fails naming it.
    store = JobStore(cluster.coordinator.db)
    manager = JobManager(cluster, store)
    servicer = CoordinatorServicer(manager)

    def register(server) -> list[str]:
        coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)
        asyncio.get_event_loop().call_soon(manager.start)
        return [coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name]

    register.on_health = (lambda report: setattr(manager, "report_health", report))  # NOT_SERVING on a db fault
    return register
