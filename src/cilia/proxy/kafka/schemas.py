"""Body layouts of the Kafka requests whose topics are read and the responses a denial writes.

Field names and version ranges follow the public Kafka protocol description;
only what the proxy reads or must write is listed.
"""

from __future__ import annotations

from cilia.proxy.kafka.schema import Struct, arr, f

PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP = 8, 9, 10, 11
HEARTBEAT, LEAVE_GROUP, SYNC_GROUP, API_VERSIONS, INIT_PRODUCER_ID = 12, 13, 14, 18, 22

TOPIC_AUTHORIZATION_FAILED = 29

FLEXIBLE_FROM: dict[int, int] = {
    PRODUCE: 9,
    FETCH: 12,
    LIST_OFFSETS: 6,
    METADATA: 9,
    OFFSET_COMMIT: 8,
    OFFSET_FETCH: 6,
    FIND_COORDINATOR: 3,
    JOIN_GROUP: 6,
    HEARTBEAT: 4,
    LEAVE_GROUP: 4,
    SYNC_GROUP: 4,
    API_VERSIONS: 3,
    INIT_PRODUCER_ID: 2,
}
"""First flexible (compact, tagged-field) version of each API key the proxy encodes."""

MAX_VERSION: dict[int, int] = {
    PRODUCE: 12,
    FETCH: 12,
    LIST_OFFSETS: 11,
    METADATA: 13,
    OFFSET_COMMIT: 9,
    OFFSET_FETCH: 9,
    FIND_COORDINATOR: 6,
    JOIN_GROUP: 9,
    HEARTBEAT: 4,
    LEAVE_GROUP: 5,
    SYNC_GROUP: 5,
    API_VERSIONS: 4,
    INIT_PRODUCER_ID: 6,
}
"""Highest version understood per key (later topic-carrying versions name topics by id)."""

REQUESTS: dict[int, Struct] = {
    PRODUCE: (
        f("TransactionalId", "string", "3+", null="3+"),
        f("Acks", "int16"),
        f("TimeoutMs", "int32"),
        arr(
            "TopicData",
            (
                f("Name", "string"),
                arr("PartitionData", (f("Index", "int32"), f("Records", "records", null="0+"))),
            ),
        ),
    ),
    FETCH: (
        f("ReplicaId", "int32"),
        f("MaxWaitMs", "int32"),
        f("MinBytes", "int32"),
        f("MaxBytes", "int32", "3+"),
        f("IsolationLevel", "int8", "4+"),
        f("SessionId", "int32", "7+"),
        f("SessionEpoch", "int32", "7+"),
        arr(
            "Topics",
            (
                f("Topic", "string"),
                arr(
                    "Partitions",
                    (
                        f("Partition", "int32"),
                        f("CurrentLeaderEpoch", "int32", "9+"),
                        f("FetchOffset", "int64"),
                        f("LastFetchedEpoch", "int32", "12+"),
                        f("LogStartOffset", "int64", "5+"),
                        f("PartitionMaxBytes", "int32"),
                    ),
                ),
            ),
        ),
        arr("ForgottenTopicsData", (f("Topic", "string"), f("Partitions", "[]int32")), "7+"),
        f("RackId", "string", "11+"),
    ),
    LIST_OFFSETS: (
        f("ReplicaId", "int32"),
        f("IsolationLevel", "int8", "2+"),
        arr(
            "Topics",
            (
                f("Name", "string"),
                arr(
                    "Partitions",
                    (
                        f("PartitionIndex", "int32"),
                        f("CurrentLeaderEpoch", "int32", "4+"),
                        f("Timestamp", "int64"),
                        f("MaxNumOffsets", "int32", "0"),
                    ),
                ),
            ),
        ),
        f("TimeoutMs", "int32", "10+"),
    ),
    METADATA: (
        arr("Topics", (f("TopicId", "uuid", "10+"), f("Name", "string", null="10+")), null="1+"),
        f("AllowAutoTopicCreation", "bool", "4+"),
        f("IncludeClusterAuthorizedOperations", "bool", "8-10"),
        f("IncludeTopicAuthorizedOperations", "bool", "8+"),
    ),
    OFFSET_COMMIT: (
        f("GroupId", "string"),
        f("GenerationIdOrMemberEpoch", "int32", "1+"),
        f("MemberId", "string", "1+"),
        f("GroupInstanceId", "string", "7+", null="7+"),
        f("RetentionTimeMs", "int64", "2-4"),
        arr(
            "Topics",
            (
                f("Name", "string"),
                arr(
                    "Partitions",
                    (
                        f("PartitionIndex", "int32"),
                        f("CommittedOffset", "int64"),
                        f("CommittedLeaderEpoch", "int32", "6+"),
                        f("CommitTimestamp", "int64", "1"),
                        f("CommittedMetadata", "string", null="0+"),
                    ),
                ),
            ),
        ),
    ),
    OFFSET_FETCH: (
        f("GroupId", "string", "0-7"),
        arr(
            "Topics",
            (f("Name", "string"), f("PartitionIndexes", "[]int32")),
            "0-7",
            null="2-7",
        ),
        arr(
            "Groups",
            (
                f("GroupId", "string"),
                f("MemberId", "string", "9+", null="9+"),
                f("MemberEpoch", "int32", "9+"),
                arr(
                    "Topics",
                    (f("Name", "string"), f("PartitionIndexes", "[]int32")),
                    null="8+",
                ),
            ),
            "8+",
        ),
        f("RequireStable", "bool", "7+"),
    ),
    FIND_COORDINATOR: (
        f("Key", "string", "0-3"),
        f("KeyType", "int8", "1+"),
        f("CoordinatorKeys", "[]string", "4+"),
    ),
}
"""Request bodies read by the proxy (topics, partitions and coordinator keys)."""

_PARTITION_ERROR = (f("PartitionIndex", "int32"), f("ErrorCode", "int16"))

RESPONSES: dict[int, Struct] = {
    PRODUCE: (
        arr(
            "Responses",
            (
                f("Name", "string"),
                arr(
                    "PartitionResponses",
                    (
                        f("Index", "int32"),
                        f("ErrorCode", "int16"),
                        f("BaseOffset", "int64", default=-1),
                        f("LogAppendTimeMs", "int64", "2+", default=-1),
                        f("LogStartOffset", "int64", "5+", default=-1),
                        arr(
                            "RecordErrors",
                            (
                                f("BatchIndex", "int32"),
                                f("BatchIndexErrorMessage", "string", null="8+"),
                            ),
                            "8+",
                        ),
                        f("ErrorMessage", "string", "8+", null="8+"),
                    ),
                ),
            ),
        ),
        f("ThrottleTimeMs", "int32", "1+"),
    ),
    FETCH: (
        f("ThrottleTimeMs", "int32", "1+"),
        f("ErrorCode", "int16", "7+"),
        f("SessionId", "int32", "7+"),
        arr(
            "Responses",
            (
                f("Topic", "string"),
                arr(
                    "Partitions",
                    (
                        f("PartitionIndex", "int32"),
                        f("ErrorCode", "int16"),
                        f("HighWatermark", "int64", default=-1),
                        f("LastStableOffset", "int64", "4+", default=-1),
                        f("LogStartOffset", "int64", "5+", default=-1),
                        arr(
                            "AbortedTransactions",
                            (f("ProducerId", "int64"), f("FirstOffset", "int64")),
                            "4+",
                            null="4+",
                        ),
                        f("PreferredReadReplica", "int32", "11+", default=-1),
                        f("Records", "records", null="0+"),
                    ),
                ),
            ),
        ),
    ),
    LIST_OFFSETS: (
        f("ThrottleTimeMs", "int32", "2+"),
        arr(
            "Topics",
            (
                f("Name", "string"),
                arr(
                    "Partitions",
                    (
                        *_PARTITION_ERROR,
                        f("OldStyleOffsets", "[]int64", "0"),
                        f("Timestamp", "int64", "1+", default=-1),
                        f("Offset", "int64", "1+", default=-1),
                        f("LeaderEpoch", "int32", "4+", default=-1),
                    ),
                ),
            ),
        ),
    ),
    METADATA: (
        f("ThrottleTimeMs", "int32", "3+"),
        arr(
            "Brokers",
            (
                f("NodeId", "int32"),
                f("Host", "string"),
                f("Port", "int32"),
                f("Rack", "string", "1+", null="1+"),
            ),
        ),
        f("ClusterId", "string", "2+", null="2+"),
        f("ControllerId", "int32", "1+", default=-1),
        arr(
            "Topics",
            (
                f("ErrorCode", "int16"),
                f("Name", "string", null="12+"),
                f("TopicId", "uuid", "10+"),
                f("IsInternal", "bool", "1+"),
                arr("Partitions", (f("ErrorCode", "int16"),)),
                f("TopicAuthorizedOperations", "int32", "8+", default=-(2**31)),
            ),
        ),
        f("ClusterAuthorizedOperations", "int32", "8-10", default=-(2**31)),
        f("ErrorCode", "int16", "13+"),
    ),
    OFFSET_COMMIT: (
        f("ThrottleTimeMs", "int32", "3+"),
        arr("Topics", (f("Name", "string"), arr("Partitions", _PARTITION_ERROR))),
    ),
    OFFSET_FETCH: (
        f("ThrottleTimeMs", "int32", "3+"),
        arr(
            "Topics",
            (
                f("Name", "string"),
                arr(
                    "Partitions",
                    (
                        f("PartitionIndex", "int32"),
                        f("CommittedOffset", "int64", default=-1),
                        f("CommittedLeaderEpoch", "int32", "5-7", default=-1),
                        f("Metadata", "string", null="0-7"),
                        f("ErrorCode", "int16"),
                    ),
                ),
            ),
            "0-7",
        ),
        f("ErrorCode", "int16", "2-7"),
        arr(
            "Groups",
            (
                f("GroupId", "string"),
                arr(
                    "Topics",
                    (
                        f("Name", "string"),
                        arr(
                            "Partitions",
                            (
                                f("PartitionIndex", "int32"),
                                f("CommittedOffset", "int64", default=-1),
                                f("CommittedLeaderEpoch", "int32", default=-1),
                                f("Metadata", "string", null="8+"),
                                f("ErrorCode", "int16"),
                            ),
                        ),
                    ),
                ),
                f("ErrorCode", "int16"),
            ),
            "8+",
        ),
    ),
    FIND_COORDINATOR: (
        f("ThrottleTimeMs", "int32", "1+"),
        f("ErrorCode", "int16", "0-3"),
        f("ErrorMessage", "string", "1-3", null="1-3"),
        f("NodeId", "int32", "0-3", default=-1),
        f("Host", "string", "0-3"),
        f("Port", "int32", "0-3", default=-1),
        arr(
            "Coordinators",
            (
                f("Key", "string"),
                f("NodeId", "int32", default=-1),
                f("Host", "string"),
                f("Port", "int32", default=-1),
                f("ErrorCode", "int16"),
                f("ErrorMessage", "string", null="4+"),
            ),
            "4+",
        ),
    ),
    JOIN_GROUP: (
        f("ThrottleTimeMs", "int32", "2+"),
        f("ErrorCode", "int16"),
        f("GenerationId", "int32", default=-1),
        f("ProtocolType", "string", "7+", null="7+"),
        f("ProtocolName", "string", null="7+"),
        f("Leader", "string"),
        f("SkipAssignment", "bool", "9+"),
        f("MemberId", "string"),
        arr(
            "Members",
            (
                f("MemberId", "string"),
                f("GroupInstanceId", "string", "5+", null="5+"),
                f("Metadata", "bytes"),
            ),
        ),
    ),
    HEARTBEAT: (f("ThrottleTimeMs", "int32", "1+"), f("ErrorCode", "int16")),
    LEAVE_GROUP: (
        f("ThrottleTimeMs", "int32", "1+"),
        f("ErrorCode", "int16"),
        arr(
            "Members",
            (
                f("MemberId", "string"),
                f("GroupInstanceId", "string", null="3+"),
                f("ErrorCode", "int16"),
            ),
            "3+",
        ),
    ),
    SYNC_GROUP: (
        f("ThrottleTimeMs", "int32", "1+"),
        f("ErrorCode", "int16"),
        f("ProtocolType", "string", "5+", null="5+"),
        f("ProtocolName", "string", "5+", null="5+"),
        f("Assignment", "bytes"),
    ),
    API_VERSIONS: (
        f("ErrorCode", "int16"),
        arr("ApiKeys", (f("ApiKey", "int16"), f("MinVersion", "int16"), f("MaxVersion", "int16"))),
        f("ThrottleTimeMs", "int32", "1+"),
    ),
    INIT_PRODUCER_ID: (
        f("ThrottleTimeMs", "int32"),
        f("ErrorCode", "int16"),
        f("ProducerId", "int64", default=-1),
        f("ProducerEpoch", "int16", default=-1),
        f("OngoingTxnProducerId", "int64", "6+", default=-1),
        f("OngoingTxnProducerEpoch", "int16", "6+", default=-1),
    ),
}
"""Responses the proxy writes itself (denials); absent fields take their defaults."""
