"""The signing roles: which component's key may sign what.

A key is trusted as one role (its file name says which: ``ROLE.pub.pem`` or
``ROLE.LABEL.pub.pem``, see oona.keyfiles). Verification checks the role as well as
the signature, and refuses anything else as ``unauthorised_signer``:

- tamiyo: TELEMETRY on telemetry and emergency, FIELD_REPORT on field_reports,
  TRAJECTORY on trajectories (the policy's decisions, for the learner); signs
  AdaptationCommands;
- tolaria, kasmina: TELEMETRY on telemetry and emergency;
- simic: POLICY_UPDATE on policy, FIELD_REPORT_ACK on field_reports.acks, TELEMETRY
  on telemetry and emergency (the learner's figures and events); signs PolicyUpdates;
- weatherlight: TELEMETRY_AGGREGATE on telemetry.aggregated, FIELD_REPORT_ACK on
  field_reports.acks, TELEMETRY on telemetry and emergency.

Each role claims only its own name as a source (``weatherlight.<service>`` too).
Weatherlight acks field reports because Simic's intake runs inside it; its own
telemetry is the events of its services (rejections among them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import SOURCE_KASMINA, SOURCE_TAMIYO, SOURCE_TOLARIA
from oona.keys import Role
from oona.signed import COMMAND_DOMAIN, POLICY_UPDATE_DOMAIN
from oona.streams import Stream

SOURCE_SIMIC = "simic"
SOURCE_WEATHERLIGHT = "weatherlight"


def _telemetry() -> set[tuple[str, int]]:
    return {
        (Stream.TELEMETRY, pb.MESSAGE_TYPE_TELEMETRY),
        (Stream.EMERGENCY, pb.MESSAGE_TYPE_TELEMETRY),
    }


def _role(name: str, publishes: Iterable[tuple[str, int]], documents: Iterable[bytes] = ()) -> Role:
    return Role(
        name=name,
        publishes=frozenset((str(stream), int(kind)) for stream, kind in publishes),
        sources=frozenset({name}),
        documents=frozenset(documents),
    )


TAMIYO = _role(
    SOURCE_TAMIYO,
    {
        *_telemetry(),
        (Stream.FIELD_REPORTS, pb.MESSAGE_TYPE_FIELD_REPORT),
        (Stream.TRAJECTORIES, pb.MESSAGE_TYPE_TRAJECTORY),
    },
    {COMMAND_DOMAIN},
)
TOLARIA = _role(SOURCE_TOLARIA, _telemetry())
KASMINA = _role(SOURCE_KASMINA, _telemetry())
SIMIC = _role(
    SOURCE_SIMIC,
    {
        *_telemetry(),
        (Stream.POLICY, pb.MESSAGE_TYPE_POLICY_UPDATE),
        (Stream.FIELD_REPORT_ACKS, pb.MESSAGE_TYPE_FIELD_REPORT_ACK),
    },
    {POLICY_UPDATE_DOMAIN},
)
WEATHERLIGHT = _role(
    SOURCE_WEATHERLIGHT,
    {
        *_telemetry(),
        (Stream.TELEMETRY_AGGREGATED, pb.MESSAGE_TYPE_TELEMETRY_AGGREGATE),
        (Stream.FIELD_REPORT_ACKS, pb.MESSAGE_TYPE_FIELD_REPORT_ACK),
    },
)

ROLES: Mapping[str, Role] = {
    role.name: role for role in (TAMIYO, TOLARIA, KASMINA, SIMIC, WEATHERLIGHT)
}
"""Every role by name: what key loading (oona.keyfiles) resolves file names against."""
