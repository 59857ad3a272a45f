// ESLint with typescript-eslint's type-checked rules (STYLE.md 16). Formatting is Prettier's job.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/** The Node globals the plain-JS scripts use (no type information there to supply them). */
const nodeGlobals = Object.fromEntries(
  ['process', 'console', 'setTimeout', 'clearTimeout', 'AbortController', 'Buffer', 'URL'].map((g) => [
    g,
    'readonly',
  ]),
);

export default tseslint.config(
  {
    ignores: [
      'dist/',
      'node_modules/',
      'native/build/',
      'test/fixtures/bin/',
      'bench/bin/',
      '.lazysnap/',
      '.scratch/',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
  },
  {
    rules: {
      // Ambient only: the WebAssembly globals can only be declared as a namespace (core/webassembly.ts).
      '@typescript-eslint/no-namespace': ['error', { allowDeclarations: true }],
      // `async` is how an implementation of a Promise-returning interface turns its throws into rejections.
      '@typescript-eslint/require-await': 'off',
      // A leading underscore marks a deliberately unused parameter; rest siblings omit fields from a copy.
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // vitest's asymmetric matchers (expect.any, expect.stringMatching, ...) are typed `any` by vitest.
      '@typescript-eslint/no-unsafe-assignment': 'off',
    },
  },
  {
    files: ['test/helpers/terraform.ts', 'test/unit/infra.test.ts'],
    rules: {
      // hcl2json's output has no schema: the Terraform tests walk it untyped and assert on what they find.
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: { ...tseslint.configs.disableTypeChecked.languageOptions, globals: nodeGlobals },
  },
);
