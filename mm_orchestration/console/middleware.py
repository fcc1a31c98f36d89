"""The console's GraphQL middleware (ConsoleGate) on every state-changing mutation: decide
(policy), audit (audit_log), then act.

Dagster's webserver hands every resolver to this graphene middleware. For a root mutation
field it

1. reads the arguments with the names the schema gives them (graphql-core hands a
   resolver their Python names, `schedule_selector` for `scheduleSelector`), works out
   the action (mutations.MUTATIONS), its target (job, assets and partitions, schedule,
   sensor, run, backfill, location: graphql_args) and whether the person's role allows it
   (policy);
2. writes one `ops.audit_log` entry (one per run for `launchMultipleRuns`, so each run's
   entry carries its run id) with the person, the role, the action, the target and the
   variables (secrets masked), in its own committed transaction, before anything
   happens; if that write fails, nothing happens (no unaudited action);
3. refuses (the entry says `refused`) with an error the UI shows, or passes the mutation
   on; a launch carries the person as the run's `mm/actor` tag, replacing whatever the
   client sent, and only an admin's keeps tags of Dagster's namespaces (`dagster/...`,
   `dagster-k8s/config`: the run's priority, runtime, pod: run_requests); the entry then
   records how it ended and the run id.

A mutation whose arguments cannot even be read to judge it (run config YAML that cannot
be built, a run id PostgreSQL refuses) is refused and audited like any other refusal.

Mutations must arrive as a POST of JSON (or application/graphql): a GET or a form POST
is what a page on another site can make a signed-in browser send, so those are refused
(and audited) whatever the role (graphql_requests.transport_problem). The reads that run
code (mutations.CODE_READS) are judged and audited the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any

from graphql import GraphQLError, GraphQLResolveInfo, OperationType, get_named_type
from graphql.type import GraphQLUnionType

from mm_orchestration.console.access import Identity, identity_in
from mm_orchestration.console.audit_log import AuditUnavailable, ConsoleAudit, ended_by
from mm_orchestration.console.dagster_private import (
    ContextLookups,
    batch_results,
    python_error,
    resolver_result,
    unauthorized_error,
)
from mm_orchestration.console.graphql_args import argument_problem
from mm_orchestration.console.graphql_requests import transport_problem
from mm_orchestration.console.mutations import CODE_READS, LAUNCH_FIELDS, MUTATIONS, Mutation
from mm_orchestration.console.policy import WITH_ITS_BATCH, Decision, decide_each, may
from mm_orchestration.console.run_requests import (
    apply_config_policy,
    config_problem,
    dropped_tags,
    inherited_config_problem,
    stamp_actor,
    unjudged_refusal,
)
from mm_orchestration.platform import audit


class ConsoleRefusal(GraphQLError):
    """A refusal of a mutation whose type has no error to carry it: answered as a client
    error with its message alone (no stack trace: it is no fault of the server)."""


# Backfills whose runs carry the tags given with them.
_BACKFILLS = frozenset({"launchPartitionBackfill", "reexecutePartitionBackfill"})


def _outcomes(
    field_name: str, value: Any, entries: int
) -> list[tuple[str, str | None, dict[str, Any]]]:
    """One outcome per audit entry: a batch's runs each from their own result."""
    results = batch_results(value)
    if field_name == "launchMultipleRuns" and results is not None and len(results) == entries:
        return [_outcome(result) for result in results]
    return [_outcome(value)] * entries


@dataclass
class ConsoleGate:
    """The graphene middleware (see the module's docstring)."""

    audit_log: ConsoleAudit

    def resolve(
        self, next_: Callable[..., Any], root: Any, info: GraphQLResolveInfo, **args: Any
    ) -> Any:
        if info.operation.operation != OperationType.MUTATION or info.path.prev is not None:
            # A query's fields, and the fields of a mutation's result: a result can reach
            # the reads that run code (a reloaded location's schedules' `futureTicks {
            # evaluationResult }`), judged and audited there as in a query.
            return self._read(next_, root, info, args)
        if info.field_name.startswith("__"):  # `mutation { __typename }` changes nothing
            return next_(root, info, **args)
        context, source, identity = _asker(info)
        field_name = info.field_name
        memo = _request_memo(context)
        if "batch" not in memo:
            memo["batch"] = self._judge_batch(info, identity, source)
        if memo["batch"]:
            return _refusal(info, field_name, memo["batch"])
        definition = info.parent_type.fields.get(field_name)
        try:
            lookups = ContextLookups(context)
            decisions = decide_each(field_name, args, identity, lookups, definition)
            admin = identity is not None and identity.at_least("admin")
            run = decisions[0][0].mutation.rule in ("launch", "reexecute")
            configured = run or field_name in _BACKFILLS
            unreadable = config_problem(args, admin) if configured else None
            unreadable = unreadable or inherited_config_problem(args, lookups)
        except Exception as exc:  # whatever it is, it is audited and refused
            return self._unjudged(info, identity, field_name, args, source, exc)
        problem = transport_problem(source) or unreadable
        entries = []
        for decision, variables in decisions:
            if problem and decision.refusal is None:
                decision.refusal = problem
            if configured:
                dropped = dropped_tags(variables, admin)
                if dropped:
                    decision.details["dropped_tags"] = dropped
            try:
                entries.append(self._write(identity, field_name, decision, variables, source))
            except AuditUnavailable as exc:
                return _refusal(info, field_name, str(exc))
        # The UI shows the refusal of a run of the batch itself, not of its companions.
        refusals = [d.refusal for d, _ in decisions if d.refusal]
        refusal = next((r for r in refusals if not r.startswith(WITH_ITS_BATCH)), None)
        refusal = refusal or next(iter(refusals), None)
        if refusal:
            return _refusal(info, field_name, refusal)
        if configured:
            assert identity is not None
            try:
                stamp_actor(field_name, args, identity.person, admin)
                apply_config_policy(args, admin)
            except Exception as exc:  # the entry must end, and say why
                message = unjudged_refusal(exc)
                self._settle(entries, [("refused", None, {"refusal": message})] * len(entries))
                return _refusal(info, field_name, message)
        try:
            result = next_(root, info, **args)
        except BaseException as exc:
            self._settle(entries, [ended_by(exc)] * len(entries))
            raise
        if isawaitable(result):
            return self._settle_later(field_name, entries, result)
        self._settle(entries, _outcomes(field_name, result, len(entries)))
        return result

    def _judge_batch(
        self, info: GraphQLResolveInfo, identity: Identity | None, source: Any
    ) -> str | None:
        """Why this request's operation may not run (None: it may): it holds more than one
        mutation (aliases, fragments). One request is one action and one audit entry, so
        such a request is refused whole with one entry listing what it held; the console's
        own UI never sends one."""
        fields = _root_fields(info)
        if len(fields) <= 1:
            return None
        counts: dict[str, int] = {}
        for name in fields.values():
            counts[name] = counts.get(name, 0) + 1
        held = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(counts.items()))
        refusal = (
            f"one mutation per request: this one holds {len(fields)} ({held[:300]}); send "
            "each on its own"
        )
        unwritten = self.audit_log.refuse(
            identity,
            "graphql_request",
            None,
            {
                "mutations": counts,
                "via": f"graphql {getattr(source, 'method', 'websocket')}",
                "refusal": refusal,
            },
        )
        return str(unwritten) if unwritten else refusal

    def _read(
        self, next_: Callable[..., Any], root: Any, info: GraphQLResolveInfo, args: dict[str, Any]
    ) -> Any:
        """A field of a query: passed on, except the reads that run code (CODE_READS),
        which are judged like the mutations that do the same and audited once per
        request, and the UI's invitation to a third party's newsletter, which is never
        shown."""
        if info.field_name == "shouldShowNux" and info.path.prev is None:
            return False
        problem = argument_problem(args)
        if problem:
            raise ConsoleRefusal(problem)  # the client's error: a 400, not a server fault
        read = CODE_READS.get((info.parent_type.name, info.field_name))
        if read is None:
            return next_(root, info, **args)
        context, source, identity = _asker(info)
        admin = identity is not None and identity.at_least("admin")
        memo = _request_memo(context)
        key = f"read:{read.action}"
        if key not in memo:
            refusal = None
            if not may(identity, read.rule):
                who = identity.role if identity and identity.role else "nobody"
                refusal = f"{who} may not {read.action.replace('_', ' ')} ({info.field_name})"
            elif "runConfigData" in args:
                refusal = config_problem({"executionParams": dict(args)}, admin)
            details = {
                "query_field": f"{info.parent_type.name}.{info.field_name}",
                "variables": audit.masked(dict(info.variable_values or {})),
                "via": f"graphql {getattr(source, 'method', 'websocket')}",
                **({"refusal": refusal} if refusal else {}),
            }
            try:
                self.audit_log.write(
                    identity, read.action, "refused" if refusal else "succeeded", None, details
                )
            except AuditUnavailable as exc:
                refusal = str(exc)
            memo[key] = refusal
        if memo[key]:
            return _refusal(info, info.field_name, memo[key])
        if "runConfigData" in args:
            trial = {"executionParams": dict(args)}
            apply_config_policy(trial, admin)
            args = trial["executionParams"]
        return next_(root, info, **args)

    def _unjudged(
        self,
        info: GraphQLResolveInfo,
        identity: Identity | None,
        field_name: str,
        args: dict[str, Any],
        source: Any,
        exc: Exception,
    ) -> Any:
        """A mutation the gate could not judge (its arguments made reading them raise):
        refused, with an entry saying why, and a GraphQL error instead of a stack trace."""
        mutation = MUTATIONS.get(field_name) or Mutation(f"unclassified:{field_name}", "admin")
        message = unjudged_refusal(exc)
        decision = Decision(mutation, None, refusal=message)
        decision.details["error"] = type(exc).__name__
        try:
            self._write(identity, field_name, decision, args, source)
        except AuditUnavailable as unavailable:
            message = str(unavailable)
        return _refusal(info, field_name, message)

    def _write(
        self,
        identity: Identity | None,
        field_name: str,
        decision: Decision,
        variables: dict[str, Any],
        source: Any,
    ) -> int:
        details = {
            **decision.details,
            "mutation": field_name,
            "variables": audit.masked(variables),
            "via": f"graphql {getattr(source, 'method', 'websocket')}",
        }
        return self.audit_log.write(
            identity,
            decision.mutation.action,
            "refused" if decision.refusal else "allowed",
            decision.target,
            details | ({"refusal": decision.refusal} if decision.refusal else {}),
            job_name=decision.job_name,
        )

    def _settle(
        self, entries: list[int], outcomes: list[tuple[str, str | None, dict[str, Any]]]
    ) -> None:
        for entry, outcome in zip(entries, outcomes, strict=True):
            self.audit_log.settle(entry, *outcome)

    async def _settle_later(self, field_name: str, entries: list[int], pending: Any) -> Any:
        try:
            value = await pending
        except BaseException as exc:
            self._settle(entries, [ended_by(exc)] * len(entries))
            raise
        self._settle(entries, _outcomes(field_name, value, len(entries)))
        return value


def _refusal(info: GraphQLResolveInfo, field_name: str, message: str) -> Any:
    """An error of a type the mutation may return and the UI shows, else a GraphQL error."""
    named = get_named_type(info.return_type)
    members = {t.name for t in named.types} if isinstance(named, GraphQLUnionType) else set()
    if "PythonError" in members and (
        field_name in LAUNCH_FIELDS or "UnauthorizedError" not in members
    ):
        return python_error(message)
    if "UnauthorizedError" in members:
        return unauthorized_error(message)
    raise ConsoleRefusal(message)


def _outcome(value: Any) -> tuple[str, str | None, dict[str, Any]]:
    """(outcome, run id, what the result said) from what the resolver returned."""
    said = resolver_result(value)
    result: dict[str, Any] = {"type": said.typename}
    if said.failed:
        # A DSN or a password may be quoted in a trace.
        message = said.message
        result["message"] = audit.masked_text(str(message))[:2000] if message is not None else None
        if said.errors:
            result["errors"] = [audit.masked_text(str(e))[:500] for e in said.errors[:20] if e]
            if result["message"] is None:
                result["message"] = "; ".join(result["errors"])[:2000]
        return "failed", None, result
    if said.backfill_id:
        result["backfill_id"] = said.backfill_id
    return "succeeded", said.run_id, result


def _request_memo(context: Any) -> dict[str, Any]:
    """What the gate decided once for this request (Dagster makes a request context per
    request): one verdict, and one audit entry, however many fields the request holds."""
    memo = getattr(context, "_mm_gate_memo", None)
    if memo is None:
        memo = {}
        try:
            context._mm_gate_memo = memo
        except AttributeError:  # a context that takes no attributes: judged field by field
            pass
    return memo


def _root_fields(info: GraphQLResolveInfo) -> dict[str, str]:
    """The operation's root fields as graphql-core executes them (aliases, fragments and
    directives applied): response key -> field name, without `__typename`."""
    from graphql.execution.collect_fields import collect_fields

    fields = collect_fields(
        info.schema,
        info.fragments,
        info.variable_values,
        info.parent_type,
        info.operation.selection_set,
    )
    return {
        key: nodes[0].name.value
        for key, nodes in fields.items()
        if not nodes[0].name.value.startswith("__")
    }


def _asker(info: GraphQLResolveInfo) -> tuple[Any, Any, Identity | None]:
    """Dagster's request context of a field, the connection it came by (None: no
    request), and the person the front found behind it."""
    context = info.context
    source = getattr(context, "source", None)
    return context, source, identity_in(getattr(source, "scope", {}) or {})
