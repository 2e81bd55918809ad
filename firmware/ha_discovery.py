# Home Assistant MQTT discovery: the k-th retained config message for this device, or None past
# the last. Loaded on demand by the link after each connect and unloaded once every message is
# sent (firmware/mqtt_link.py), so neither this code nor the messages stay in the heap: one
# message exists at a time. The objective selector's options come from bess_core.OBJECTIVES.
import json

from bess_core import OBJECTIVES

# (object id, name, value template, unit, device_class)
SENSORS = (
    ('gcp_w', 'Grid power', '{{ value_json.gcp_w }}', 'W', 'power'),
    ('import_limit_w', 'Import limit', '{{ value_json.import_limit_w }}', 'W', 'power'),
    ('bat_w', 'Battery power', '{{ value_json.bat_w }}', 'W', 'power'),
    ('bat_sp_w', 'Battery setpoint', '{{ value_json.bat_sp_w }}', 'W', 'power'),
    ('soc', 'State of charge', '{{ value_json.soc_bp / 100 }}', '%', 'battery'),
    ('avail_chg_w', 'Available charge power', '{{ value_json.avail_chg_w }}', 'W', 'power'),
    ('avail_dis_w', 'Available discharge power', '{{ value_json.avail_dis_w }}', 'W', 'power'),
    ('state', 'Controller state', '{{ value_json.state }}', None, None),
    # what a load manager may give EVs now (docs/schedule.md, "DLM"), and the reserve in force
    ('ev_limit_w', 'EV power limit (DLM)', '{{ value_json.ev_limit_w }}', 'W', 'power'),
    ('reserve', 'Reserve SoC', '{{ value_json.reserve_bp / 100 }}', '%', 'battery'),
)


def message(link, k):
    """(topic bytes, payload bytes) of message k for link (an MqttLink), or None when k is past the end."""
    c = link.cfg
    did = link.id
    dev = {'identifiers': ['bess_' + did], 'name': c['device_name'] or ('BESS ' + did),
           'manufacturer': 'bess-controller'}
    avail = link.t_status.decode()
    if k < len(SENSORS):
        oid, name, tpl, unit, dc = SENSORS[k]
        d = {'name': name, 'unique_id': '%s_%s' % (did, oid), 'state_topic': link.t_tele.decode(),
             'value_template': tpl, 'availability_topic': avail, 'device': dev}
        if unit:
            d['unit_of_measurement'] = unit
            d['device_class'] = dc
            d['state_class'] = 'measurement'
        return ('%s/sensor/%s/%s/config' % (c['ha_prefix'], did, oid)).encode(), json.dumps(d).encode()
    if k == len(SENSORS):
        d = {'name': 'Objective', 'unique_id': did + '_objective', 'state_topic': link.t_state.decode(),
             'value_template': '{{ value_json.objective }}',
             'command_topic': link.t_cmd.decode() + 'objective',
             'command_template': '{"value": "{{ value }}"}',
             'options': list(OBJECTIVES), 'availability_topic': avail, 'device': dev}
        return ('%s/select/%s/objective/config' % (c['ha_prefix'], did)).encode(), json.dumps(d).encode()
    return None
