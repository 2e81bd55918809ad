"""The telemetry record schema (docs/telemetry.md) for consumers and tests, kept off the device:
lib/telemetry.py builds the records, this says what a consumer may expect in them."""

# Field list of schema v1 (for consumers and tests): name -> type ('int', 'int|null', 'str', 'obj').
SCHEMA_V1 = {
    'v': 'int', 'seq': 'int', 'ts_ms': 'int', 'gcp_w': 'int', 'gcp_l1_w': 'int|null',
    'gcp_l2_w': 'int|null', 'gcp_l3_w': 'int|null', 'import_limit_w': 'int', 'bat_sp_w': 'int',
    'bat_w': 'int', 'soc_bp': 'int', 'objective': 'str', 'state': 'str', 'binding': 'str',
    'flags': 'int', 'avail_chg_w': 'int', 'avail_dis_w': 'int', 'dispatch_left_ms': 'int',
    'override_left_ms': 'int', 'err': 'obj', 'heap_free': 'int', 'cycle_max_us': 'int',
}
# v2 adds the schedule in force (sch: id str|null, version, interval -1 = none / default block,
# source), the reserve in force and the DLM limit
SCHEMA_V2 = dict(SCHEMA_V1, reserve_bp='int', ev_limit_w='int', sch='obj')
SCH_KEYS = ('id', 'version', 'interval', 'source')
ERR_KEYS = ('meter', 'battery', 'cmd_rejected', 'mqtt_lost', 'ring_dropped')
