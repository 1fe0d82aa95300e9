/** Moved to src/sources/open.ts (the library opens sources); kept for code written against this path. */
export * from '../sources/open.js';
