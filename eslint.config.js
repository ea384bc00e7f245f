'use strict'

module.exports = require('neostandard')({
  ts: true,
  filesTs: ['**/*.mts'],
  ignores: ['dist/**', 'coverage/**', 'node_modules/**', 'bench/.tmp/**']
})
