/**
 * BLAKE3 known answers: the functions that name chunks against the official test vectors, so a
 * wrong hash (a swapped binding, a keyed hash fed the wrong key) cannot pass by agreeing with itself.
 *
 * Source: test_vectors/test_vectors.json of https://github.com/BLAKE3-team/BLAKE3 (commit
 * 2f6f56f3477321c9e4742f1c863e45f2cfcbfb5e). Each input is `input_len` bytes of i % 251; the key of
 * keyed_hash is the 32 ASCII bytes "whats the Elvish word for friend". The vectors give 131 bytes of
 * extended output; the first 32 are the default-length hash, which is what names a chunk.
 */
import { describe, expect, it } from 'vitest';

import { hashChunk } from '../../store/chunk.js';
import { ChunkCrypto, ENCRYPTION_ALG } from '../../store/chunk-crypto.js';

const KEY = Buffer.from('whats the Elvish word for friend', 'ascii');

/** [input_len, hash, keyed_hash], the first 32 bytes of each, copied from test_vectors.json. */
const VECTORS: [number, string, string][] = [
  [
    0,
    'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262',
    '92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26',
  ],
  [
    1,
    '2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213',
    '6d7878dfff2f485635d39013278ae14f1454b8c0a3a2d34bc1ab38228a80c95b',
  ],
  [
    1023,
    '10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11',
    'c951ecdf03288d0fcc96ee3413563d8a6d3589547f2c2fb36d9786470f1b9d6e',
  ],
  [
    1024,
    '42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7',
    '75c46f6f3d9eb4f55ecaaee480db732e6c2105546f1e675003687c31719c7ba4',
  ],
  [
    1025,
    'd00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444',
    '357dc55de0c7e382c900fd6e320acc04146be01db6a8ce7210b7189bd664ea69',
  ],
  [
    2048,
    'e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a',
    '879cf1fa2ea0e79126cb1063617a05b6ad9d0b696d0d757cf053439f60a99dd1',
  ],
  [
    3072,
    'b98cb0ff3623be03326b373de6b9095218513e64f1ee2edd2525c7ad1e5cffd2',
    '044a0e7b172a312dc02a4c9a818c036ffa2776368d7f528268d2e6b5df191770',
  ],
  [
    4097,
    '9b4052b38f1c5fc8b1f9ff7ac7b27cd242487b3d890d15c96a1c25b8aa0fb995',
    '00df940cd36bb9fa7cbbc3556744e0dbc8191401afe70520ba292ee3ca80abbc',
  ],
  [
    7169,
    'a003fc7a51754a9b3c7fae0367ab3d782dccf28855a03d435f8cfe74605e7817',
    'ed9b1a922c046fdb3d423ae34e143b05ca1bf28b710432857bf738bcedbfa511',
  ],
  [
    8193,
    'bab6c09cb8ce8cf459261398d2e7aef35700bf488116ceb94a36d0f5f1b7bc3b',
    '954a2a75420c8d6547e3ba5b98d963e6fa6491addc8c023189cc519821b4a1f5',
  ],
  [
    16384,
    'f875d6646de28985646f34ee13be9a576fd515f76b5b0a26bb324735041ddde4',
    '9e9fc4eb7cf081ea7c47d1807790ed211bfec56aa25bb7037784c13c4b707b0d',
  ],
  [
    31744,
    '62b6960e1a44bcc1eb1a611a8d6235b6b4b78f32e7abc4fb4c6cdcce94895c47',
    'efa53b389ab67c593dba624d898d0f7353ab99e4ac9d42302ee64cbf9939a419',
  ],
  [
    102400,
    'bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085',
    '1c35d1a5811083fd7119f5d5d1ba027b4d01c0c6c49fb6ff2cf75393ea5db4a7',
  ],
];

function input(length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = i % 251;
  return b;
}

/**
 * An encrypted snapshot's chunk namer with idKey set to the vectors' key. Only `id` (BLAKE3 keyed
 * with idKey) is used; the rest of the transfer just has to be well formed.
 */
const keyed = ChunkCrypto.fromTransfer({
  info: { alg: ENCRYPTION_ALG, mode: 'convergent', keyId: 'kat', keyCheck: '0'.repeat(32) },
  idKey: KEY,
  encKey: Buffer.alloc(32),
});

describe('BLAKE3 known answers (official test vectors)', () => {
  it.each(VECTORS)('hashChunk names %i bytes as BLAKE3 hash does', (length, hash) => {
    expect(hashChunk(input(length))).toBe(hash);
  });

  it.each(VECTORS)('ChunkCrypto.id names %i bytes as BLAKE3 keyed_hash does', (length, _hash, keyedHash) => {
    expect(keyed.id(input(length))).toBe(keyedHash);
  });
});
