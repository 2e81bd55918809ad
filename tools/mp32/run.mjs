// Run a Python script on 32-bit MicroPython (WebAssembly port, 31-bit small ints like ESP32/RP2040).
// usage: node tools/mp32/run.mjs [--heap BYTES] [--put HOSTPATH:MPPATH]... SCRIPT.py [ARGS...]
// --put copies a host file or directory (recursively) into the in-memory filesystem.
// Exit code 1 when the script raises. The package comes from build/mp32 (make deps installs it).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const pkgDir = process.env.MP32_DIR || path.join(root, 'build', 'mp32');
const entry = path.join(pkgDir, 'node_modules', '@micropython', 'micropython-webassembly-pyscript', 'micropython.mjs');
if (!fs.existsSync(entry)) {
  console.error(`32-bit MicroPython not installed at ${entry}: run 'make deps'`);
  process.exit(2);
}
let heap = 16 * 1024 * 1024;
const puts = [];
const argv = process.argv.slice(2);
while (argv.length && argv[0].startsWith('--')) {
  const opt = argv.shift();
  if (opt === '--heap') heap = parseInt(argv.shift(), 10);
  else if (opt === '--put') puts.push(argv.shift());
  else { console.error(`unknown option ${opt}`); process.exit(2); }
}
if (!argv.length) { console.error('usage: run.mjs [--heap N] [--put HOST:MP]... SCRIPT [ARGS]'); process.exit(2); }

const { loadMicroPython } = await import(pathToFileURL(entry).href);
const mp = await loadMicroPython({
  heapsize: heap,
  stdout: (line) => process.stdout.write(line + '\n'),
  stderr: (line) => process.stderr.write(line + '\n'),
});

function mkdirs(p) {
  let cur = '';
  for (const part of p.split('/').filter(Boolean)) {
    cur += '/' + part;
    try { mp.FS.mkdir(cur); } catch (e) { /* exists */ }
  }
}
function put(host, dest) {
  if (fs.statSync(host).isDirectory()) {
    mkdirs(dest);
    for (const name of fs.readdirSync(host)) {
      if (name === '__pycache__') continue;
      put(path.join(host, name), dest + '/' + name);
    }
  } else {
    mkdirs(path.posix.dirname(dest));
    mp.FS.writeFile(dest, fs.readFileSync(host));
  }
}
for (const spec of puts) {
  const i = spec.lastIndexOf(':');
  put(spec.slice(0, i), spec.slice(i + 1));
}
const [script, ...args] = argv;
try {
  mp.runPython(`import sys\nsys.argv.clear()\nsys.argv.extend(${JSON.stringify([script, ...args])})`);
  mp.runPython(fs.readFileSync(script, 'utf8'));
} catch (e) {
  process.stderr.write(String(e && e.message ? e.message : e) + '\n');
  process.exitCode = 1;
}
