import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Tests mount real FUSE filesystems and start real servers: two files at a time on two cores.
    maxWorkers: 2,
    reporters: ['default'],
    // One cluster token file for the run, removed at its end (test/support/cluster.ts uses it).
    globalSetup: ['test/support/cluster-token-setup.ts'],
    // The pinned AWS SDK supports Node 20; its notice about future releases is noise here.
    env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
  },
});
