import sys
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else 'lib')
import schedule as sc
T0 = 1764300000
d = {'v': 1, 'id': 'x', 'version': 3, 'created': T0, 'valid_until': T0 + 86400,
     'default': {'objective': 'ss'},
     'intervals': [{'start': T0 + 3600, 'duration_s': 3600, 'power_w': -1, 'firm': True}]}
s = sc.compile_(d, {'min_soc_bp': 1000, 'max_soc_bp': 9500, 'import_limit_w': 60000})
print(s.at(3600), s.get('power_w', 0), s.get('firm', 0), s.get('objective', 1), s.at(0))
try:
    sc.compile_(dict(d, version=0))
except sc.ScheduleError as e:
    print('rejected', str(e).count('\n'))
