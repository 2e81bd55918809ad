"""A throwaway mosquitto on 127.0.0.1 (tests, `make sim`, the fixed-heap run), and small helpers.

    br = Broker(workdir).start(); ...; br.stop()      # br.port: a free loopback port
"""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time


def mosquitto_exe():
    exe = shutil.which('mosquitto') or (os.path.exists('/usr/sbin/mosquitto') and '/usr/sbin/mosquitto')
    if not exe:
        raise RuntimeError('mosquitto missing: apt-get install mosquitto (make test installs it as root)')
    return exe


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(pred, timeout, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


class Broker:
    """mosquitto on 127.0.0.1:<free port>; extra config lines (password_file, acl_file...).
    tls=(cafile, certfile, keyfile): the listener speaks TLS only (paths to PEM files)."""

    def __init__(self, workdir, extra=(), persistence=False, tls=None, name='mosquitto', port=None):
        self.dir = str(workdir)
        self.port = port or free_port()
        self.conf = os.path.join(self.dir, name + '.conf')
        # as root, mosquitto would switch to user "mosquitto", who cannot read pytest's tmp dirs
        lines = ['user %s' % pwd.getpwuid(os.getuid()).pw_name, 'listener %d 127.0.0.1' % self.port]
        if tls:
            lines += ['cafile %s' % tls[0], 'certfile %s' % tls[1], 'keyfile %s' % tls[2]]
        lines += ['log_dest file %s' % os.path.join(self.dir, name + '.log'),
                  'log_type error', 'log_type warning', 'log_type notice']
        if persistence:
            lines += ['persistence true', 'persistence_location %s/' % self.dir, 'queue_qos0_messages true',
                      'autosave_interval 0']
        lines += list(extra)
        if not any(x.startswith('allow_anonymous') for x in lines):
            lines.append('allow_anonymous true')
        with open(self.conf, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([mosquitto_exe(), '-c', self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def up():
            try:
                socket.create_connection(('127.0.0.1', self.port), timeout=0.2).close()
                return True
            except OSError:
                return False
        if not wait_for(up, 5):
            raise RuntimeError('mosquitto did not start on 127.0.0.1:%d' % self.port)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
