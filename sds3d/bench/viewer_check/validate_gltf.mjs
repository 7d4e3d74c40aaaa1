// Khronos glTF-Validator on .glb files: node validate_gltf.mjs FILE.glb [...]
// Needs `npm install gltf-validator` in the folder given by NODE_PATH (or next to this script).
// Prints the summary (errors, warnings, infos, hints) and every message; exits 1 on errors or warnings.
import { createRequire } from 'module';
import fs from 'fs';
const require = createRequire(process.env.NODE_PATH ? process.env.NODE_PATH + '/' : import.meta.url);
const validator = require('gltf-validator');
let bad = false;
for (const file of process.argv.slice(2)) {
  const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)), { maxIssues: 100 });
  const i = report.issues;
  console.log(`${file}: ${i.numErrors} errors, ${i.numWarnings} warnings, ${i.numInfos} infos, ${i.numHints} hints`
    + ` (validator ${report.validatorVersion})`);
  for (const m of i.messages) console.log(`  [${['error', 'warning', 'info', 'hint'][m.severity]}] ${m.code}: ${m.message} ${m.pointer || ''}`);
  bad = bad || i.numErrors > 0 || i.numWarnings > 0;
}
process.exit(bad ? 1 : 0);
