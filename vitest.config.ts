import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Tests mount real FUSE filesystems and start real servers: two files at a time on two cores.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
