"""Policy: the rule model, validation, the repository and resolution to desired state."""

from cilia.policy.api import (
    ENTITIES,
    MAX_PORTS,
    CIDRRule,
    EgressRule,
    IngressRule,
    K8sServiceNamespace,
    K8sServiceSelectorNamespace,
    PortProtocol,
    PortRule,
    Rule,
    Service,
)
from cilia.policy.desired import (
    ALL_PORTS,
    ANY_IDENTITY,
    Direction,
    EndpointPolicy,
    PolicyEntry,
    Protocol,
)
from cilia.policy.errors import ValidationError
from cilia.policy.l7 import L7Rules, PortRuleHTTP, PortRuleKafka
from cilia.policy.parse import parse_rule, parse_rules
from cilia.policy.repository import PolicyRepository
from cilia.policy.resolve import PolicyResolver, resolve
from cilia.policy.selectorcache import SelectorCache

__all__ = [
    "ALL_PORTS",
    "ANY_IDENTITY",
    "ENTITIES",
    "MAX_PORTS",
    "CIDRRule",
    "Direction",
    "EgressRule",
    "EndpointPolicy",
    "IngressRule",
    "K8sServiceNamespace",
    "K8sServiceSelectorNamespace",
    "L7Rules",
    "PolicyEntry",
    "PolicyRepository",
    "PolicyResolver",
    "PortProtocol",
    "PortRule",
    "PortRuleHTTP",
    "PortRuleKafka",
    "Protocol",
    "Rule",
    "SelectorCache",
    "Service",
    "ValidationError",
    "parse_rule",
    "parse_rules",
    "resolve",
]
