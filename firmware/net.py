# Network bring-up: the board file says which interface (data), the site config holds the
# credentials (never in a board file). Starts the interface and returns at once: WLAN association
# and DHCP complete in the background; the MQTT link retries until the network is up.
#
# Board file "network":
#   "host"                                  unix port: the host's network, nothing to do
#   {"kind": "wlan"}                        ESP32 / Pico W station; site: network.ssid/password
#   {"kind": "lan", "phy": "LAN8720", "mdc": 23, "mdio": 18, "power": 16, "phy_addr": 1,
#    "clock": {"pin": 0, "mode": "in"}}     ESP32 RMII Ethernet (WT32-ETH01: clock in on GPIO0
#                                           from the PHY's oscillator, enabled by power=GPIO16;
#                                           Olimex ESP32-POE: clock out on GPIO17, power GPIO12)
# Site config "network" (optional keys): {"ssid": "...", "password": "...", "hostname": "bess-1",
#   "ifconfig": ["192.168.1.20", "255.255.255.0", "192.168.1.1", "192.168.1.1"]}  (default DHCP)
import json

_iface = None


def start(board_net, site_net):
    """Start the interface. Returns (interface or None, message)."""
    global _iface
    site_net = site_net or {}
    kind = board_net.get('kind') if isinstance(board_net, dict) else board_net
    if kind in (None, 'host', 'none'):
        return None, 'network: host (nothing to start)'
    try:
        import network
    except ImportError:
        return None, 'network: %s not available on this port (no network module)' % kind
    hn = site_net.get('hostname')
    if hn:
        try:
            network.hostname(hn)
        except Exception:
            pass
    try:
        if kind == 'wlan':
            ssid = site_net.get('ssid')
            if not ssid:
                return None, 'network: wlan board but no network.ssid in the site config'
            w = network.WLAN(network.STA_IF)
            w.active(True)
            _static(w, site_net)
            w.connect(ssid, site_net.get('password', ''))
            _iface = w
            return w, 'network: wlan connecting to %r' % ssid
        if kind == 'lan':
            from machine import Pin
            kw = {'mdc': Pin(board_net['mdc']), 'mdio': Pin(board_net['mdio']),
                  'phy_type': getattr(network, 'PHY_' + board_net.get('phy', 'LAN8720')),
                  'phy_addr': board_net.get('phy_addr', 0)}
            if board_net.get('power') is not None:
                kw['power'] = Pin(board_net['power'])
            clk = board_net.get('clock')
            if clk:
                kw['ref_clk'] = Pin(clk['pin'])
                kw['ref_clk_mode'] = Pin.OUT if clk.get('mode') == 'out' else Pin.IN
            lan = network.LAN(**kw)
            lan.active(True)
            _static(lan, site_net)
            _iface = lan
            return lan, 'network: lan (%s) up, %s' % (board_net.get('phy', 'LAN8720'),
                                                      'static' if site_net.get('ifconfig') else 'DHCP')
    except Exception as e:
        return None, 'network: %s failed: %s: %s' % (kind, type(e).__name__, e)
    return None, 'network: unknown kind %r in the board file' % (kind,)


def _static(iface, site_net):
    ic = site_net.get('ifconfig')
    if ic:
        iface.ifconfig(tuple(ic))


def connected():
    """True when the interface has an address (or the host's network is used)."""
    if _iface is None:
        return True
    try:
        return bool(_iface.isconnected())
    except Exception:
        return False


def start_from_files(config_path, root):
    """Boot: read the site config and its board file, start the network, print what happened.
    Never raises: a missing or bad config is reported by the firmware's safe state."""
    try:
        with open(config_path) as f:
            site = json.load(f)
        with open('%s/boards/%s.json' % (root, site['board'])) as f:
            board = json.load(f)
    except Exception:
        return None
    iface, msg = start(board.get('network'), site.get('network'))
    print(msg)
    return iface
