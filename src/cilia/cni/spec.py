"""What the CNI specification fixes, shared by the plugin and the agent's CNI handler.

Imports nothing: the plugin loads it on every container start.
"""

SPEC_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
DEFAULT_AGENT_SOCKET = "/var/run/cilia/cilia.sock"
ENVIRONMENT = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
"""The variables the runtime sets besides CNI_COMMAND, all passed on to the agent."""

# Error codes of the CNI specification, and ours (100 and up).
INCOMPATIBLE_VERSION = 1
CONTAINER_UNKNOWN = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
AGENT_REFUSED = 100
AGENT_FAILED = 101
CHECK_FAILED = 102
